#!/usr/bin/env python3
"""Generate a deterministic, realistic staged release tree for benchmarks.

Usage:
    scripts/gen-tree.py OUT_DIR [--scale N] [--seed S] [--no-symlinks]

The tree is shaped like BinaryCrate's staged release after Django's collectstatic:
Django app code, the front-end Python packages (cavorite, historygraph, binarycrate),
the pypyjs release (a few multi-megabyte interpreter-like JS files, ~1,100 Python library
modules and their index.json), app CSS/JS, fonts (.woff/.ttf) and images (.png/.jpg),
with the static tree present twice, as collectstatic leaves it:
`pypyjs-release/pypyjs-release/...` and `binarycrate/binarycrate/static/...` are the
sources, `binarycrate/public/static/...` holds copies of the same files.

At scale 1: about 3,450 files and 48 MB; --scale N multiplies both. All content comes from a
PRNG seeded with --seed (default 1), so the same seed gives byte-identical files, modes and
names. The text looks like code (identifiers from a vocabulary, indentation, repetition), and
the mix of text and (nearly) incompressible binaries is tuned so that the whole tree's
`tar | gzip -6` is about 0.30 of its size, like the real tree's. A few files are executable
(0755); two relative symlinks are created unless --no-symlinks. OUT_DIR must not exist or be
empty. Prints the file count and the total bytes.

Python 3 standard library only.
"""

import argparse
import json
import os
import random
import re
import sys
import time

# ---------------------------------------------------------------------------------------------
# Vocabulary

WORDS = """
account action active add address adapter after alias all allow apply archive args array
attr attribute auth backend base batch before binary block body bool buffer build builder
bundle byte cache call callback canvas cell change channel char check child class clean clear
client close code codec collect column command commit compile component config connect
connection console constant content context convert copy count crate create current cursor
data date debug decode default delete depth dict diff dirty dispatch display document done
draw edge edit element empty encode end entry env error event exec exit expand export expr
field file filter find first flag flush format frame from func get global graph group handle
handler hash header height history hook id image import index info init inner input insert
instance item iter join key kind label last layout length level line link list load local
lock log lookup loop main manager map mark match max member merge message meta method min
mode model module name node number object offset open option order output owner page pair
panel parent parse parser part path pending pick point pop port position post prefix prepare
prev print process project property proxy push query queue range raw read record ref refresh
register release reload remove render replace request reset resolve resource response result
return root route row rule run save scope screen script search section select self send
sequence server session set setting shape shared size slot sort source space split stack
start state static status step store stream string style sub submit sum symbol sync table
tag target task template temp test text thread time title token tool total trace track
transform tree type undo unit update upload url user util valid value version view visit
wait widget width window word worker wrap write
""".split()

PY_BUILTINS = """len isinstance getattr setattr hasattr str int list dict tuple sorted min max
range enumerate zip repr type super iter next any all sum abs bool""".split()

PY_EXC = """ValueError TypeError KeyError IndexError AttributeError RuntimeError IOError OSError
NotImplementedError StopIteration LookupError AssertionError""".split()

STDLIB_SEED = """abc aifc antigravity anydbm argparse ast asynchat asyncore atexit audiodev base64
BaseHTTPServer Bastion bdb binhex bisect calendar CGIHTTPServer cgi cgitb chunk cmd code codecs
codeop collections colorsys commands compileall ConfigParser contextlib Cookie cookielib copy
copy_reg cProfile csv dbhash decimal difflib dircache dis doctest DocXMLRPCServer dumbdbm
dummy_thread dummy_threading filecmp fileinput fnmatch formatter fpformat fractions ftplib
functools genericpath getopt getpass gettext glob gzip hashlib heapq hmac htmlentitydefs
htmllib HTMLParser httplib ihooks imaplib imghdr imputil inspect io keyword linecache locale
macpath macurl2path mailbox mailcap markupbase md5 mhlib mimetools mimetypes MimeWriter mimify
modulefinder multifile mutex netrc new nntplib ntpath nturl2path numbers opcode optparse os
os2emxpath pdb pickle pickletools pipes pkgutil platform plistlib popen2 poplib posixfile
posixpath pprint profile pstats pty py_compile pyclbr pydoc Queue quopri random re repr
rexec rfc822 rlcompleter robotparser runpy sched sets sgmllib sha shelve shlex shutil
SimpleHTTPServer SimpleXMLRPCServer site smtpd smtplib sndhdr socket SocketServer sre
sre_compile sre_constants sre_parse ssl stat statvfs string StringIO stringold stringprep
struct subprocess sunau sunaudio symbol symtable sysconfig tabnanny tarfile telnetlib tempfile
textwrap this threading timeit toaiff token tokenize trace traceback tty types urllib urllib2
urlparse user UserDict UserList UserString uu uuid warnings wave weakref whichdb xdrlib
xmllib xmlrpclib zipfile""".split()

STDLIB_PACKAGES = """bsddb compiler ctypes curses distutils email encodings hotshot idlelib
importlib json lib2to3 logging multiprocessing pydoc_data sqlite3 test unittest wsgiref xml
_pypy_interact pyrepl""".split()


def ident(rng, words=WORDS, n=None):
    n = n or rng.choice((1, 2, 2, 2, 3))
    return "_".join(rng.choice(words) for _ in range(n))


def camel(rng, n=None):
    n = n or rng.choice((1, 2, 2, 3))
    return "".join(rng.choice(WORDS).capitalize() for _ in range(n))


def sentence(rng, lo=5, hi=14):
    s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
    return s[0].upper() + s[1:] + "."


# ---------------------------------------------------------------------------------------------
# Python source


class PyGen:
    """Python modules that look like real code: a local vocabulary per module, used repeatedly."""

    def __init__(self, rng, modules):
        self.rng = rng
        self.modules = modules  # names other modules may import

    def module(self, target, name="", imports=()):
        rng = self.rng
        self.ids = [ident(rng) for _ in range(rng.randint(12, 26))]
        self.attrs = [ident(rng, n=rng.choice((1, 2))) for _ in range(rng.randint(6, 12))]
        self.classes = [camel(rng) for _ in range(rng.randint(2, 6))]
        self.imported = list(imports)
        out = ['"""%s\n\n%s\n%s\n"""\n' % (sentence(rng, 3, 8), sentence(rng), sentence(rng))]
        for m in self.imported:
            if rng.random() < 0.7:
                out.append("import %s\n" % m)
            else:
                out.append("from %s import %s\n" % (m, ", ".join(rng.sample(self.ids, 2))))
        out.append("\n__all__ = [%s]\n\n" % ", ".join("'%s'" % c for c in self.classes[:3]))
        for _ in range(rng.randint(1, 4)):
            out.append("%s = %s\n" % (ident(rng).upper(), self.literal()))
        out.append("\n")
        size = sum(len(s) for s in out)
        while size < target:
            if rng.random() < 0.45:
                chunk = self.klass()
            else:
                chunk = self.function("", rng.choice(self.ids), False)
            out.append(chunk)
            size += len(chunk)
        if rng.random() < 0.3:
            out.append("\nif __name__ == '__main__':\n    %s()\n" % rng.choice(self.ids))
        return "".join(out).encode()

    def literal(self):
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            return str(rng.choice((0, 1, 2, 8, 16, 32, 64, 100, 255, 1024, rng.randint(0, 99999))))
        if r < 0.6:
            return "'%s'" % ident(rng).replace("_", rng.choice(("_", "-", " ", ".")))
        if r < 0.7:
            return rng.choice(("None", "True", "False"))
        if r < 0.85:
            return "(%s)" % ", ".join("'%s'" % rng.choice(self.ids) for _ in range(rng.randint(2, 5)))
        return "{%s}" % ", ".join("'%s': %s" % (rng.choice(self.attrs), rng.randint(0, 64))
                                  for _ in range(rng.randint(1, 4)))

    def name(self):
        rng = self.rng
        r = rng.random()
        if r < 0.55:
            return rng.choice(self.ids)
        if r < 0.8:
            return "self." + rng.choice(self.attrs)
        if r < 0.9 and self.imported:
            return "%s.%s" % (rng.choice(self.imported), rng.choice(self.ids))
        return rng.choice(self.ids) + "." + rng.choice(self.attrs)

    def expr(self, depth=0):
        rng = self.rng
        r = rng.random()
        if r < 0.3 or depth > 1:
            return self.name()
        if r < 0.5:
            args = ", ".join(self.expr(depth + 1) for _ in range(rng.randint(0, 3)))
            return "%s(%s)" % (self.name(), args)
        if r < 0.6:
            return "%s(%s)" % (rng.choice(PY_BUILTINS), self.name())
        if r < 0.75:
            return self.literal()
        if r < 0.82:
            return "%s[%s]" % (self.name(), rng.choice(("0", "-1", "i", "key", "1:", self.name())))
        return "%s %s %s" % (self.name(), rng.choice(("+", "-", "*", "%", "or", "and")),
                             self.expr(depth + 1))

    def cond(self):
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            return "%s is None" % self.name()
        if r < 0.5:
            return "not %s" % self.name()
        if r < 0.7:
            return "%s %s %s" % (self.name(), rng.choice(("==", "!=", "<", ">=", "in")), self.expr(1))
        if r < 0.85:
            return "isinstance(%s, %s)" % (self.name(), rng.choice(self.classes + ["str", "int"]))
        return self.expr(1)

    def block(self, ind, depth, n):
        rng = self.rng
        out = []
        for _ in range(n):
            r = rng.random()
            if r < 0.34:
                out.append("%s%s = %s\n" % (ind, self.name(), self.expr()))
            elif r < 0.44 and depth < 3:
                out.append("%sif %s:\n" % (ind, self.cond()))
                out.append(self.block(ind + "    ", depth + 1, rng.randint(1, 3)))
                if rng.random() < 0.35:
                    out.append("%selse:\n" % ind)
                    out.append(self.block(ind + "    ", depth + 1, rng.randint(1, 2)))
            elif r < 0.51 and depth < 3:
                out.append("%sfor %s in %s:\n" % (ind, rng.choice(self.ids), self.expr(1)))
                out.append(self.block(ind + "    ", depth + 1, rng.randint(1, 3)))
            elif r < 0.58:
                out.append("%s# %s\n" % (ind, sentence(rng, 4, 10)))
            elif r < 0.72:
                out.append("%s%s(%s)\n" % (ind, self.name(),
                                           ", ".join(self.expr(1) for _ in range(rng.randint(0, 3)))))
            elif r < 0.77 and depth < 3:
                out.append("%stry:\n" % ind)
                out.append(self.block(ind + "    ", depth + 1, rng.randint(1, 2)))
                out.append("%sexcept %s:\n" % (ind, rng.choice(PY_EXC)))
                out.append(self.block(ind + "    ", depth + 1, 1))
            elif r < 0.82:
                out.append("%sraise %s('%s %%r' %% (%s,))\n" % (ind, rng.choice(PY_EXC),
                                                              sentence(rng, 2, 6)[:-1].lower(),
                                                              self.name()))
            elif r < 0.88:
                out.append("%s%s.append(%s)\n" % (ind, rng.choice(self.ids), self.expr(1)))
            else:
                out.append("%sreturn %s\n" % (ind, self.expr()))
        return "".join(out)

    def function(self, ind, name, method):
        rng = self.rng
        params = rng.sample(self.ids, rng.randint(0, 3))
        if rng.random() < 0.3 and params:
            params[-1] += "=" + self.literal()
        if method:
            params.insert(0, "self")
        out = ["%sdef %s(%s):\n" % (ind, name, ", ".join(params))]
        if rng.random() < 0.6:
            out.append('%s    """%s"""\n' % (ind, sentence(rng)))
        out.append(self.block(ind + "    ", 0, rng.randint(2, 9)))
        out.append("\n")
        return "".join(out)

    def klass(self):
        rng = self.rng
        name = rng.choice(self.classes)
        base = rng.choice(self.classes + ["object", "object", "Exception"])
        out = ["\nclass %s(%s):\n" % (name, base if base != name else "object")]
        out.append('    """%s\n\n    %s\n    """\n\n' % (sentence(rng), sentence(rng)))
        attrs = rng.sample(self.attrs, min(len(self.attrs), rng.randint(1, 5)))
        init = ["    def __init__(self, %s):\n" % ", ".join(a for a in attrs)]
        init += ["        self.%s = %s\n" % (a, a) for a in attrs]
        out.append("".join(init) + "\n")
        for _ in range(rng.randint(2, 7)):
            out.append(self.function("    ", rng.choice(self.ids + ["__repr__", "__eq__", "__len__"]), True))
        return "".join(out)


# ---------------------------------------------------------------------------------------------
# JavaScript


def asm_js(rng, target):
    """Emscripten/asm.js-like output, as in pypyjs.vm.js."""
    out = ['// PyPy.js interpreter, compiled with Emscripten\n'
           'var Module;if(!Module)Module=(typeof Module!=="undefined"?Module:null)||{};\n'
           'function asmModule(global,env,buffer){"use asm";\n'
           ' var HEAP8=new global.Int8Array(buffer);var HEAP16=new global.Int16Array(buffer);\n'
           ' var HEAP32=new global.Int32Array(buffer);var HEAPU8=new global.Uint8Array(buffer);\n'
           ' var HEAPF64=new global.Float64Array(buffer);var STACKTOP=env.STACKTOP|0;\n']
    size = sum(len(s) for s in out)
    heaps = ("HEAP32", "HEAP32", "HEAP32", "HEAP8", "HEAPU8", "HEAP16", "HEAPF64")
    shifts = {"HEAP32": ">>2", "HEAP8": ">>0", "HEAPU8": ">>0", "HEAP16": ">>1", "HEAPF64": ">>3"}
    types = ("Signed", "Unsigned", "objectPtr", "rpy_stringPtr", "dicttablePtr", "arrayPtr",
             "W_RootPtr", "Char", "Bool", "Float")
    funcs = []
    while size < target:
        nparam = rng.randint(1, 4)
        fname = "_pypy_g_%s__%s" % (ident(rng, n=rng.randint(2, 4)),
                                   "_".join(rng.choice(types) for _ in range(nparam)))
        funcs.append(fname)
        params = ["$%d" % i for i in range(nparam)]
        nloc = rng.randint(6, 40)
        lines = ["function %s(%s) {\n" % (fname, ",".join(params))]
        lines += [" %s = %s|0;\n" % (p, p) for p in params]
        lines.append(" var %s, label = 0, sp = 0;\n" % ", ".join(
            "$%d = 0" % i for i in range(nparam, nparam + nloc)))
        lines.append(" sp = STACKTOP;\n")
        v = nparam
        ind = " "
        opened = 0
        for _ in range(nloc):
            a = rng.randint(0, max(0, v - 1))
            r = rng.random()
            if r < 0.35:
                h = rng.choice(heaps)
                lines.append("%s$%d = %s[(($%d) + %d|0)%s]|0;\n" % (ind, v, h, a, rng.randint(0, 12) * 4, shifts[h]))
            elif r < 0.55:
                lines.append("%s$%d = (($%d) + %d)|0;\n" % (ind, v, a, rng.choice((1, 4, 8, 12, 16, -1, rng.randint(0, 4096)))))
            elif r < 0.65:
                lines.append("%s$%d = ($%d|0)%s(%d);\n" % (ind, v, a, rng.choice(("==", "!=", "<", ">")), rng.choice((0, 0, 1, -1, rng.randint(2, 300)))))
                if opened < 3 and rng.random() < 0.6:
                    lines.append("%sif ($%d) {\n" % (ind, v))
                    ind += " "
                    opened += 1
            elif r < 0.8:
                lines.append("%s$%d = (%s($%d|0,%s)|0);\n" % (ind, v, rng.choice(funcs) if len(funcs) > 1 else fname, a,
                                                          ",".join("$%d" % rng.randint(0, v) for _ in range(rng.randint(0, 2))) or "0"))
            elif r < 0.9:
                h = rng.choice(heaps[:3])
                lines.append("%s%s[(($%d) + %d|0)>>2] = $%d;\n" % (ind, h, a, rng.randint(0, 8) * 4, rng.randint(0, v)))
            else:
                lines.append("%sHEAP32[%d>>2] = %d;\n" % (ind, rng.randint(1, 1 << 22) * 4, rng.randint(0, 65535)))
            if opened and rng.random() < 0.25:
                ind = ind[:-1]
                opened -= 1
                lines.append("%s}\n" % ind)
            v += 1
        while opened:
            ind = ind[:-1]
            opened -= 1
            lines.append("%s}\n" % ind)
        lines.append(" STACKTOP = sp;return ($%d|0);\n}\n" % (v - 1))
        chunk = "".join(lines)
        out.append(chunk)
        size += len(chunk)
    out.append(" return {%s};\n}\n" % ",".join("%s:%s" % (f, f) for f in funcs[:200]))
    return "".join(out).encode()


def minified_js(rng, target):
    """Minified library-style JS: short names, one long line after another."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    props = [ident(rng, n=1) + rng.choice(("", "", camel(rng, 1))) for _ in range(120)]
    out = ["/*! %s v%d.%d.%d | (c) %s | MIT */\n" % (camel(rng), rng.randint(1, 4), rng.randint(0, 12),
                                                  rng.randint(0, 9), camel(rng))]
    size = len(out[0])
    while size < target:
        parts = []
        for _ in range(rng.randint(10, 40)):
            a, b, c = rng.choice(letters), rng.choice(letters), rng.choice(letters)
            r = rng.random()
            if r < 0.3:
                parts.append("function %s(%s,%s){return %s.%s(%s)}" % (a + b, a, b, a, rng.choice(props), b))
            elif r < 0.55:
                parts.append("var %s=%s.%s||{}" % (c, a, rng.choice(props)))
            elif r < 0.75:
                parts.append("%s.%s=function(%s){this.%s=%s;return this}" % (
                    a, rng.choice(props), b, rng.choice(props), b))
            elif r < 0.9:
                parts.append("if(%s&&%s.%s)%s=%s.%s(%d)" % (a, a, rng.choice(props), b, a, rng.choice(props), rng.randint(0, 999)))
            else:
                parts.append('%s["%s"]=%s' % (a, rng.choice(props), rng.randint(0, 1 << 16)))
        line = ";".join(parts) + ";\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()


def plain_js(rng, target):
    """Hand-written-looking JS (the pypyjs wrapper, app scripts)."""
    ids = [camel(rng)[0].lower() + camel(rng)[1:] for _ in range(30)]
    out = ["// %s\n'use strict';\n\n" % sentence(rng)]
    size = len(out[0])
    while size < target:
        f = rng.choice(ids)
        lines = ["/**\n * %s\n * @param {Object} %s\n */\n" % (sentence(rng), rng.choice(ids)),
                 "%s.prototype.%s = function %s(%s) {\n" % (camel(rng, 1), f, f, ", ".join(rng.sample(ids, rng.randint(0, 3))))]
        for _ in range(rng.randint(2, 12)):
            r = rng.random()
            if r < 0.4:
                lines.append("  var %s = this.%s(%s);\n" % (rng.choice(ids), rng.choice(ids), rng.choice(ids)))
            elif r < 0.6:
                lines.append("  if (!%s) {\n    throw new Error('%s');\n  }\n" % (rng.choice(ids), sentence(rng, 3, 7)))
            elif r < 0.8:
                lines.append("  return %s.then(function(%s) {\n    return %s.%s(%s);\n  });\n" % (
                    rng.choice(ids), rng.choice(ids), rng.choice(ids), rng.choice(ids), rng.choice(ids)))
            else:
                lines.append("  // %s\n  this._%s = %s;\n" % (sentence(rng, 3, 9), rng.choice(ids), rng.choice(ids)))
        lines.append("};\n\n")
        chunk = "".join(lines)
        out.append(chunk)
        size += len(chunk)
    return "".join(out).encode()


# ---------------------------------------------------------------------------------------------
# CSS, HTML, SVG, binaries

CSS_PROPS = ("color: #%06x", "background-color: #%06x", "margin: %dpx", "padding: %dpx %dpx",
             "font-size: %dpx", "line-height: %d.%d", "border: %dpx solid #%03x", "width: %d%%",
             "height: %dpx", "z-index: %d", "border-radius: %dpx", "top: %dpx", "left: %dpx")
CSS_FIXED = ("display: block", "display: none", "display: inline-block", "position: relative",
             "position: absolute", "float: left", "clear: both", "overflow: hidden",
             "text-align: center", "font-weight: bold", "cursor: pointer", "white-space: nowrap",
             "box-sizing: border-box", "text-decoration: none", "vertical-align: middle")


def css(rng, target):
    classes = [ident(rng).replace("_", "-") for _ in range(40)]
    out = ["/* %s */\n\n" % sentence(rng)]
    size = len(out[0])
    while size < target:
        sel = ", ".join("%s.%s%s" % (rng.choice(("", "", "div", "a", "li", "span", "#main ")),
                                     rng.choice(classes),
                                     rng.choice(("", "", ":hover", " > a", " .%s" % rng.choice(classes))))
                        for _ in range(rng.randint(1, 3)))
        decl = []
        for _ in range(rng.randint(1, 7)):
            if rng.random() < 0.5:
                decl.append("  %s;\n" % rng.choice(CSS_FIXED))
            else:
                p = rng.choice(CSS_PROPS)
                specs = re.findall(r"%0?\d*([dx])", p)
                decl.append("  %s;\n" % (p % tuple(rng.randint(0, 0xffffff if k == "x" else 64) for k in specs)))
        chunk = "%s {\n%s}\n\n" % (sel, "".join(decl))
        out.append(chunk)
        size += len(chunk)
    return "".join(out).encode()


def html(rng, target):
    out = ['{% extends "base.html" %}\n{% load static %}\n{% block content %}\n']
    size = len(out[0])
    while size < target:
        cls = ident(rng).replace("_", "-")
        chunk = ('<div class="%s">\n  <h2>{{ %s.%s }}</h2>\n  <p>%s</p>\n'
                 '  {%% for %s in %s %%}\n    <a href="{%% url \'%s\' %s.id %%}">{{ %s.%s }}</a>\n'
                 '  {%% endfor %%}\n</div>\n') % (cls, ident(rng, n=1), ident(rng, n=1), sentence(rng),
                                                  "item", ident(rng), ident(rng), "item", "item", ident(rng, n=1))
        out.append(chunk)
        size += len(chunk)
    out.append("{% endblock %}\n")
    return "".join(out).encode()


def svg(rng, target):
    out = ['<?xml version="1.0" encoding="utf-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
           'width="%d" height="%d" viewBox="0 0 1792 1792">\n' % (rng.randint(8, 64), rng.randint(8, 64))]
    size = len(out[0])
    while size < target:
        pts = " ".join("%s%d %d" % (rng.choice("MLQCZ"), rng.randint(0, 1792), rng.randint(0, 1792))
                       for _ in range(rng.randint(4, 24)))
        chunk = '<path fill="#%06x" d="%s"/>\n' % (rng.randint(0, 0xffffff), pts)
        out.append(chunk)
        size += len(chunk)
    out.append("</svg>\n")
    return "".join(out).encode()


# Translation table used for .ttf glyph data: about half of the byte values map to 0, which
# gives ~4.5 bits of entropy per byte (gzip -6 keeps ~0.6 of it), like real TrueType outlines.
TTF_TABLE = bytes((i if i & 1 else 0) for i in range(256))


def png(rng, size):
    head = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.randbytes(17)
    return head + b"IDAT" + rng.randbytes(max(0, size - len(head) - 16)) + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def jpg(rng, size):
    head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return head + rng.randbytes(max(0, size - len(head) - 2)) + b"\xff\xd9"


def woff(rng, size):
    return b"wOFF\x00\x01\x00\x00" + rng.randbytes(max(0, size - 8))


def ttf(rng, size):
    return b"\x00\x01\x00\x00\x00\x0f\x00\x80" + rng.randbytes(max(0, size - 8)).translate(TTF_TABLE)


# ---------------------------------------------------------------------------------------------
# Tree writer


class Tree:
    def __init__(self, root):
        self.root = root
        self.files = 0
        self.bytes = 0
        self.symlinks = 0
        self.dirs = set()
        self.written = set()

    def write(self, rel, data, mode=0o644):
        """Writes a file; a name already used gets a -2, -3... suffix. Returns the name used."""
        if rel in self.written:
            stem, ext = os.path.splitext(rel)
            k = 2
            while "%s-%d%s" % (stem, k, ext) in self.written:
                k += 1
            rel = "%s-%d%s" % (stem, k, ext)
        self.written.add(rel)
        path = os.path.join(self.root, rel)
        d = os.path.dirname(path)
        if d not in self.dirs:
            os.makedirs(d, exist_ok=True)
            self.dirs.add(d)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        self.files += 1
        self.bytes += len(data)
        return rel

    def symlink(self, target, rel):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(target, path)
        self.symlinks += 1

    def fix_dir_modes(self):
        for dirpath, dirnames, _ in os.walk(self.root):
            for d in dirnames:
                p = os.path.join(dirpath, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o755)
        os.chmod(self.root, 0o755)


# Static roots: each file written under a source root is also written, as collectstatic would
# copy it, under PUBLIC.
PYPYJS_SRC = "pypyjs-release/pypyjs-release"
APP_STATIC_SRC = "binarycrate/binarycrate/static"
PUBLIC = "binarycrate/public/static"

# Mix tuned so that tar | gzip -6 of the whole tree is ~0.30 of its size.
SIZES = dict(
    vm_js=7_000_000,          # pypyjs.vm.js, per scale unit
    vm_min_js=1_800_000,      # a minified build of it
    bundle_js=1_000_000,      # the app's bundled front end
    py_mean=6_800,            # pypyjs lib modules: lognormal, this mean
    images_total=1_600_000,   # per static copy
    fonts_total=750_000,      # per static copy
)


def sizes_with_total(rng, n, total, sigma, lo, hi):
    """n lognormal sizes rescaled to add up to ~total, so the content mix barely varies by seed."""
    raw = [lognormal_size(rng, 1000, sigma, 1, None) for _ in range(n)]
    k = total / sum(raw)
    return [min(hi, max(lo, int(r * k))) for r in raw]


def lognormal_size(rng, mean, sigma=1.0, lo=200, hi=None):
    # mean of lognormal = exp(mu + sigma^2/2)
    import math
    mu = math.log(mean) - sigma * sigma / 2
    s = int(rng.lognormvariate(mu, sigma))
    s = max(lo, s)
    if hi:
        s = min(hi, s)
    return s


def generate(root, scale, seed, symlinks):
    rng = random.Random(seed)
    tree = Tree(root)

    def static(src_root, rel, data, mode=0o644):
        used = tree.write(os.path.join(src_root, rel), data, mode)
        public = tree.write(os.path.join(PUBLIC, os.path.relpath(used, src_root)), data, mode)
        assert os.path.relpath(public, PUBLIC) == os.path.relpath(used, src_root), public

    # --- module names for the pypyjs stdlib, unique and deterministic
    names = []
    seen = set()

    def add(n):
        if n not in seen:
            seen.add(n)
            names.append(n)

    n_modules = 1100 * scale
    for m in STDLIB_SEED:
        add(m)
    for p in STDLIB_PACKAGES:
        add(p + "/__init__")
        for _ in range(rng.randint(5, 30)):
            add(p + "/" + ident(rng, n=rng.choice((1, 2))))
    while len(names) < n_modules:
        r = rng.random()
        if r < 0.6:
            add(ident(rng, n=rng.choice((1, 2))))
        else:
            add(rng.choice(STDLIB_PACKAGES) + "/" + ident(rng, n=rng.choice((1, 2))))
    names = names[:n_modules]
    # every package kept needs its __init__
    for n in list(names):
        if "/" in n:
            pkg = n.split("/")[0] + "/__init__"
            if pkg not in seen:
                add(pkg)
    dotted = [n.replace("/__init__", "").replace("/", ".") for n in names]
    pygen = PyGen(rng, dotted)

    # --- front-end packages: sources at the repo root, bundled into pypyjs lib/modules
    frontend = []
    for pkg_dir, pkg, count in (("front-end/binarycrate", "binarycrate", 24),
                                ("cavorite/cavorite", "cavorite", 18),
                                ("historygraph/historygraph", "historygraph", 16)):
        mods = ["__init__"] + [ident(rng, n=rng.choice((1, 2))) for _ in range(count * scale - 1)]
        mods = list(dict.fromkeys(mods))
        for m in mods:
            data = pygen.module(lognormal_size(rng, 7000, 0.8), pkg, rng.sample(dotted[:200], rng.randint(1, 5)))
            tree.write("%s/%s.py" % (pkg_dir, m), data)
            static(PYPYJS_SRC, "lib/modules/%s/%s.py" % (pkg, m), data)
            frontend.append(("%s/%s" % (pkg, m), data))

    # --- pypyjs lib/modules + index.json
    index = {"modules": {}, "preload": {}}
    py_sizes = sizes_with_total(rng, len(names), SIZES["py_mean"] * len(names), 1.1, 150, 120_000)
    for n, d, size in zip(names, dotted, py_sizes):
        imports = sorted(set(rng.sample(dotted, rng.randint(0, 6))) - {d})
        data = pygen.module(size, d, imports)
        rel = "lib/modules/%s.py" % n
        static(PYPYJS_SRC, rel, data)
        index["modules"][d] = {"file": n + ".py", "imports": imports}
        if rng.random() < 0.02:
            index["preload"][d] = "%s.py" % n
    for n, _ in frontend:
        index["modules"][n.replace("/__init__", "").replace("/", ".")] = {"file": n + ".py", "imports": []}
    static(PYPYJS_SRC, "lib/modules/index.json", json.dumps(index, indent=1, sort_keys=True).encode() + b"\n")

    # --- pypyjs interpreter JS
    for i in range(scale):
        sfx = "" if i == 0 else ".%d" % i
        static(PYPYJS_SRC, "lib/pypyjs.vm%s.js" % sfx, asm_js(rng, SIZES["vm_js"]))
        static(PYPYJS_SRC, "lib/pypyjs.vm%s.min.js" % sfx, minified_js(rng, SIZES["vm_min_js"]))
    static(PYPYJS_SRC, "lib/pypyjs.js", plain_js(rng, 60_000))
    static(PYPYJS_SRC, "lib/FunctionPromise.js", plain_js(rng, 8_000))
    static(PYPYJS_SRC, "lib/Promise.min.js", minified_js(rng, 7_000))
    static(PYPYJS_SRC, "lib/README.md", ("# PyPy.js\n\n%s\n" % "\n".join(sentence(rng) for _ in range(40))).encode())
    static(PYPYJS_SRC, "index.html", html(rng, 4_000))
    for i in range(50 * scale):
        static(PYPYJS_SRC, "lib/tests/test_%s.js" % ident(rng), plain_js(rng, lognormal_size(rng, 6_000)))

    # --- the app's own static files
    static(APP_STATIC_SRC, "js/binarycrate.bundle.js", minified_js(rng, SIZES["bundle_js"] * scale))
    for i in range(30 * scale):
        static(APP_STATIC_SRC, "js/%s.js" % ident(rng).replace("_", "-"),
               (minified_js if rng.random() < 0.4 else plain_js)(rng, lognormal_size(rng, 15_000)))
    for i in range(25 * scale):
        static(APP_STATIC_SRC, "css/%s.css" % ident(rng).replace("_", "-"), css(rng, lognormal_size(rng, 12_000)))
    for i in range(40 * scale):
        static(APP_STATIC_SRC, "img/icons/%s.svg" % ident(rng).replace("_", "-"), svg(rng, lognormal_size(rng, 2_500)))
    n_img = 260 * scale
    img_sizes = sizes_with_total(rng, n_img, SIZES["images_total"] * scale, 1.2, 120, 400_000)
    for i, size in enumerate(img_sizes):
        name = "img/%s/%s-%d" % (rng.choice(("screens", "icons", "ui", "docs", "logos")), ident(rng).replace("_", "-"), i)
        if rng.random() < 0.7:
            static(APP_STATIC_SRC, name + ".png", png(rng, size))
        else:
            static(APP_STATIC_SRC, name + ".jpg", jpg(rng, size))
    favicon = png(rng, 5430)
    static(APP_STATIC_SRC, "img/favicon.ico", favicon)
    fonts = ("fontawesome-webfont", "glyphicons-halflings-regular", "SourceCodePro-Regular",
             "SourceCodePro-Bold", "OpenSans-Regular", "OpenSans-Bold", "OpenSans-Italic", "Roboto-Mono")
    per_font = SIZES["fonts_total"] // (2 * len(fonts))
    for i in range(scale):
        for f in fonts:
            sfx = "" if i == 0 else "-%d" % i
            static(APP_STATIC_SRC, "fonts/%s%s.woff" % (f, sfx), woff(rng, lognormal_size(rng, per_font, 0.4)))
            static(APP_STATIC_SRC, "fonts/%s%s.ttf" % (f, sfx), ttf(rng, lognormal_size(rng, per_font, 0.4)))
    static(APP_STATIC_SRC, "version_hash.json",
           json.dumps({"version_hash": "%032x" % rng.getrandbits(128)}).encode() + b"\n")

    # --- Django admin static: from the virtualenv, so it appears only under PUBLIC
    for i in range(35 * scale):
        tree.write("%s/admin/js/%s.js" % (PUBLIC, ident(rng).replace("_", "-")),
                   (minified_js if rng.random() < 0.5 else plain_js)(rng, lognormal_size(rng, 9_000)))
    for i in range(15 * scale):
        tree.write("%s/admin/css/%s.css" % (PUBLIC, ident(rng).replace("_", "-")), css(rng, lognormal_size(rng, 7_000)))
    for i in range(30 * scale):
        tree.write("%s/admin/img/%s.svg" % (PUBLIC, ident(rng).replace("_", "-")), svg(rng, lognormal_size(rng, 900)))
    for i in range(4 * scale):
        tree.write("%s/admin/fonts/Roboto-%s-%d.woff" % (PUBLIC, camel(rng, 1), i), woff(rng, lognormal_size(rng, 40_000, 0.3)))

    # --- the Django project itself (not static)
    tree.write("binarycrate/manage.py",
               b"#!/usr/bin/env python\nimport os\nimport sys\n\nif __name__ == '__main__':\n"
               b"    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'binarycrate.settings')\n"
               b"    from django.core.management import execute_from_command_line\n"
               b"    execute_from_command_line(sys.argv)\n", 0o755)
    for f in ("settings", "urls", "wsgi", "__init__", "build_number", "production_template", "celery"):
        data = pygen.module(lognormal_size(rng, 3_000, 0.6), f, ["os", "django.conf"])
        if f == "build_number":
            data = b"BUILD_NUMBER = '000001'\n"
        tree.write("binarycrate/binarycrate/%s.py" % f, data)
    apps = [ident(rng, n=1) for _ in range(8 * scale)]
    apps = list(dict.fromkeys(apps))
    for app in apps:
        for f in ("__init__", "models", "views", "urls", "admin", "forms", "tests", "apps", "serializers"):
            tree.write("binarycrate/%s/%s.py" % (app, f),
                       pygen.module(lognormal_size(rng, 4_000, 0.8), f, ["django.db", "django.http", "json"]))
        for k in range(rng.randint(1, 5)):
            tree.write("binarycrate/%s/migrations/%04d_%s.py" % (app, k + 1, ident(rng)),
                       pygen.module(lognormal_size(rng, 2_000, 0.5), "migration", ["django.db"]))
        tree.write("binarycrate/%s/migrations/__init__.py" % app, b"")
        for k in range(rng.randint(1, 4)):
            tree.write("binarycrate/%s/templates/%s/%s.html" % (app, app, ident(rng)), html(rng, lognormal_size(rng, 2_500)))
    tree.write("binarycrate/templates/base.html", html(rng, 5_000))
    for s in ("build.sh", "collect.sh", "deploy_check.sh"):
        tree.write("scripts/%s" % s, ("#!/bin/sh\nset -e\n# %s\n%s\n" % (
            sentence(rng), "\n".join("%s %s --%s" % (ident(rng, n=1), ident(rng), ident(rng, n=1)) for _ in range(20)))).encode(), 0o755)
    tree.write("requirements.txt", "".join("%s==%d.%d.%d \\\n    --hash=sha256:%064x\n" % (
        ident(rng, n=1), rng.randint(0, 4), rng.randint(0, 20), rng.randint(0, 9), rng.getrandbits(256)) for _ in range(25)).encode())
    tree.write("README.md", ("# BinaryCrate\n\n%s\n" % "\n".join(sentence(rng) for _ in range(30))).encode())
    tree.write("deploy.toml", b'app = "binarycrate"\n[static]\nroot = "binarycrate/public/static"\n')

    if symlinks:
        # collectstatic follows links: the public copy of a linked static file is a regular file
        tree.symlink("README.md", "README")
        tree.symlink("../img/favicon.ico", APP_STATIC_SRC + "/icons/favicon.ico")
        tree.write(PUBLIC + "/icons/favicon.ico", favicon)

    tree.fix_dir_modes()
    return tree


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--scale", type=int, default=1, help="multiply files and bytes (default 1)")
    ap.add_argument("--seed", type=int, default=1, help="PRNG seed (default 1)")
    ap.add_argument("--no-symlinks", action="store_true", help="create no symlinks")
    a = ap.parse_args()
    if a.scale < 1:
        ap.error("--scale must be >= 1")
    if os.path.exists(a.out_dir) and (not os.path.isdir(a.out_dir) or os.listdir(a.out_dir)):
        sys.exit("gen-tree: %s exists and is not an empty directory; refusing to write into it" % a.out_dir)
    os.makedirs(a.out_dir, exist_ok=True)
    t0 = time.perf_counter()
    tree = generate(a.out_dir, a.scale, a.seed, not a.no_symlinks)
    dt = time.perf_counter() - t0
    print("gen-tree: %s: %d files, %d bytes (%.1f MB), %d symlinks, scale %d, seed %d, %.1f s"
          % (a.out_dir, tree.files, tree.bytes, tree.bytes / 1e6, tree.symlinks, a.scale, a.seed, dt))


if __name__ == "__main__":
    main()
