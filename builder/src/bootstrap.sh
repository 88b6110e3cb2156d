# shellcheck shell=sh
# Puts the installer on this server: `builder bootstrap` sends this script through SSM Run
# Command (AWS-RunShellScript), run by `sh` with `set -eu`. The builder puts these values in
# front of it, each validated and single-quoted, and the script only ever uses them as "$name":
#   tool           the program name its `--version` line starts with (`installer`)
#   result_prefix  what starts the one result line on standard output
#   dest           where the installer goes
#   want           its SHA-256        size  its size in bytes
#   force          1 to replace an installer reporting a newer version
#   url            a presigned URL to download it from, or empty, and then
#   src            its path in a file store mounted at the same path on every server
: "${tool:?}" "${result_prefix:?}" "${dest:?}" "${want:?}" "${size:?}" "${force:?}"
: "${url=}" "${src=}"

result() { printf '%sprevious=%s new=%s outcome=%s\n' "$result_prefix" "$1" "$2" "$3"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }
# The version an installer reports (`installer 0.1.0 (commit …)`), or nothing.
version_of() {
  line=$("$1" --version 2>/dev/null | head -n 1) || return 0
  case "$line" in "$tool "*) ;; *) return 0 ;; esac
  v=${line#"$tool "}
  v=${v%% *}
  case "$v" in ''|*[!0-9A-Za-z.+~-]*) return 0 ;; esac
  printf '%s' "$v"
}
# Succeeds when version $1 is newer than $2 (MAJOR.MINOR.PATCH, compared as numbers).
newer() {
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, "."); split(b, y, ".");
    for (i = 1; i <= 3; i++) { p = x[i] + 0; q = y[i] + 0; if (p > q) exit 0; if (p < q) exit 1 }
    exit 1 }'
}
sum_of() { sha256sum < "$1" | cut -d ' ' -f 1; }
command -v sha256sum >/dev/null 2>&1 || fail "sha256sum is not installed on this server (coreutils)"
previous=none
if [ -e "$dest" ] || [ -L "$dest" ]; then
  [ -f "$dest" ] || fail "\`$dest\` exists and is not a file: nothing was changed"
  previous=$(version_of "$dest")
  [ -n "$previous" ] || previous=unknown
  if [ "$(sum_of "$dest")" = "$want" ]; then
    result "$previous" "$previous" unchanged
    echo "\`$dest\` is already this installer (sha256 $want): nothing to do"
    exit 0
  fi
fi
dir=$(dirname -- "$dest")
[ -d "$dir" ] || mkdir -p -- "$dir"
tmp=$(mktemp "$dir/.$tool.bootstrap.XXXXXX")
trap 'rm -f -- "$tmp" "$tmp.failed"' EXIT
# At most one byte more than the installer has is written: a store object replaced by a huge
# one cannot fill this server's disk.
limit=$((size + 1))
check_size() {
  [ "$(wc -c <"$tmp")" -le "$size" ] || fail "the stored installer is larger than the $size bytes it should have: the store object was replaced; nothing was replaced here"
}
if [ -n "$url" ]; then
  if command -v curl >/dev/null 2>&1; then
    { curl -fsS --retry 3 "$url" || : >"$tmp.failed"; } | head -c "$limit" >"$tmp"
    how=curl
  elif command -v wget >/dev/null 2>&1; then
    { wget -q -O - "$url" || : >"$tmp.failed"; } | head -c "$limit" >"$tmp"
    how=wget
  else
    fail "neither curl nor wget is installed on this server: install one (apt-get install curl)"
  fi
  check_size
  [ ! -e "$tmp.failed" ] || fail "cannot download the installer with $how (an expired URL? run builder bootstrap again)"
else
  [ -f "$src" ] || fail "the store file \`$src\` is not on this server: a \`file://\` store must be mounted at the same path on every server (or use an \`s3://\` store)"
  head -c "$limit" <"$src" >"$tmp"
  check_size
fi
got=$(sum_of "$tmp")
[ "$got" = "$want" ] || fail "the downloaded installer's SHA-256 is $got, not $want: nothing was replaced"
chmod 0755 "$tmp"
new=$(version_of "$tmp")
if [ -z "$new" ]; then
  why=$("$tmp" --version 2>&1 | head -n 2 | tr '\n' ' ') || true
  fail "the new installer does not run on this server ($(getconf GNU_LIBC_VERSION 2>/dev/null || echo glibc unknown)): $why"
fi
if [ "$previous" != none ] && [ "$force" != 1 ]; then
  if [ "$previous" = unknown ]; then
    result unknown "$new" refused
    fail "\`$dest\` exists but reports no installer version: not replaced (--force replaces it)"
  fi
  if newer "$previous" "$new"; then
    result "$previous" "$new" refused
    fail "\`$dest\` is installer $previous, newer than $new: not replaced (--force replaces it)"
  fi
fi
# On disk before it takes the name, so a crash leaves the old installer or the whole new one.
sync
mv -f -- "$tmp" "$dest"
trap - EXIT
after=$("$dest" --version 2>&1) || fail "the installed \`$dest\` does not run: $after"
if [ "$previous" = none ]; then outcome=installed; else outcome=replaced; fi
result "$previous" "$new" "$outcome"
echo "$after"
