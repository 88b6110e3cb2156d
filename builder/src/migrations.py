"""
A release's Django migration graph, as facts, read with Django's own migration loader.

`builder package` embeds this file (`include_str!`), writes it to a temporary file and runs

    <packaging venv python> migrations.py

with the Django project directory (the one holding `manage.py`) as the working directory and
`DJANGO_SETTINGS_MODULE` set to the build settings. No database is used or needed: the loader
is given no connection, so it reads the migration files only, and every migration counts as
unapplied (squashed migrations therefore replace the migrations they squash, as on a fresh
database). Works with Django 2.2 to 5.x and Python 3.8+.

On success it prints ONE JSON object (one line, ASCII, keys sorted) on stdout and exits 0;
anything else anyone prints goes to stderr. If Django cannot be set up or cannot load the
migrations (import error, missing dependency, inconsistent graph, ...) it prints one line on
stderr, `migrations.py: <what failed>: <ExceptionClass>: <message>`, and exits 1.

Output:

    {
      "django": "4.2.7",                          # django.get_version()
      "apps": {                                   # every app with at least one migration
        "catalog": [                              # (contrib apps too), keys sorted
          {
            "name": "0001_initial",
            "dependencies": [["auth", "0012_alter_user_first_name_max_length"]],
            "operations": [OPERATION, ...]
          },
          ...
        ],
        ...
      }
    }

An app's migrations are in the order Django applies them (`migrate` on an empty database).
`dependencies` are the migration's parents in the loader's graph, sorted: its declared
dependencies with `__first__`/`__latest__` and swappable models resolved and squashed
migrations in place of the ones they replace, plus the migrations that declared `run_before`
it.

`operations` are the migration's operations in order, except that a `SeparateDatabaseAndState`
is replaced by its `database_operations` (recursively), since they are what touches the
database; its `state_operations` are left out. Every OPERATION has all of these keys, null
when they do not apply:

    kind              the operation's class name: "AddField", "RunPython", "MyCustomOp", ...
    description       op.describe()
    model             lowercased name of the model the operation is about (RenameModel: the
                      old name), for model, field, index and constraint operations
    field             the field's name for field operations (RenameField: the old name)
    new_name          RenameField: the new field name; RenameModel: the new model name,
                      lowercased like `model`; AlterModelTable: the new table name
    reversible        true or false (RunPython without reverse_code and RunSQL without
                      reverse_sql are false; RunPython.noop as reverse_code is reversible)
    null              AddField, AlterField: the new field's `null`
    has_default       AddField, AlterField: the new field has a default (or a Django 5
                      `db_default`)
    preserve_default  AddField, AlterField: false when the default was a one-off given to
                      makemigrations (the column ends up with no default)
    was_null          AlterField: the field's `null` just before the operation, from the
                      project state of the migration's ancestors; null if it cannot be told
"""
import json
import os
import sys


def fail(what, exc):
    """Reports why the migrations cannot be read, on one line of stderr, and exits 1."""
    message = ' '.join(str(exc).split())
    sys.stderr.write('migrations.py: %s: %s: %s\n' % (what, type(exc).__name__, message))
    sys.stderr.flush()
    sys.exit(1)


def fields_of(model_state):
    """The fields of a ModelState by name (a list of pairs before Django 3.1, a dict since)."""
    fields = model_state.fields
    return fields if isinstance(fields, dict) else dict(fields)


def was_null(op, app_label, state):
    """The `null` of the field `op` alters, in `state` (before `op`), or None."""
    if state is None:
        return None
    try:
        model = state.models[(app_label, op.model_name.lower())]
        field = fields_of(model).get(op.name)
        return None if field is None else bool(field.null)
    except Exception:
        return None


def describe(op):
    try:
        return str(op.describe())
    except Exception:
        return type(op).__name__


def operation_facts(op, app_label, state):
    """The OPERATION object of `op`; `state` is the project state just before it, or None."""
    from django.db import migrations
    from django.db.migrations.operations.fields import FieldOperation
    from django.db.migrations.operations.models import ModelOperation
    from django.db.models.fields import NOT_PROVIDED

    facts = {
        'kind': type(op).__name__,
        'description': describe(op),
        'model': None,
        'field': None,
        'new_name': None,
        'reversible': None,
        'null': None,
        'has_default': None,
        'preserve_default': None,
        'was_null': None,
    }
    try:
        facts['reversible'] = bool(op.reversible)
    except Exception:
        facts['reversible'] = False

    if isinstance(op, migrations.RenameModel):
        facts['model'] = op.old_name.lower()
        facts['new_name'] = op.new_name.lower()
    elif isinstance(op, ModelOperation):
        facts['model'] = op.name.lower()
        if isinstance(op, migrations.AlterModelTable):
            facts['new_name'] = op.table
    elif isinstance(getattr(op, 'model_name', None), str):
        # Field operations, and index and constraint operations.
        facts['model'] = op.model_name.lower()

    if isinstance(op, migrations.RenameField):
        facts['field'] = op.old_name
        facts['new_name'] = op.new_name
    elif isinstance(op, FieldOperation):
        facts['field'] = op.name

    if isinstance(op, (migrations.AddField, migrations.AlterField)):
        field = op.field
        facts['null'] = bool(field.null)
        db_default = getattr(field, 'db_default', NOT_PROVIDED)  # Django 5.0+
        facts['has_default'] = bool(field.has_default()) or db_default is not NOT_PROVIDED
        facts['preserve_default'] = bool(op.preserve_default)
        if isinstance(op, migrations.AlterField):
            facts['was_null'] = was_null(op, app_label, state)
    return facts


def walk(operations, app_label, state, out):
    """Appends to `out` the facts of `operations` (SeparateDatabaseAndState flattened to its
    database operations), advancing `state` (the project state before the first of them, or
    None if unknown) as Django does. Returns the state after them, or None if it got lost."""
    from django.db import migrations

    for op in operations:
        if isinstance(op, migrations.SeparateDatabaseAndState):
            # Django runs the database operations each from the state the previous left, on
            # a copy; the real state moves by the state operations only.
            inner = None
            if state is not None:
                try:
                    inner = state.clone()
                except Exception:
                    inner = None
            walk(op.database_operations, app_label, inner, out)
        else:
            out.append(operation_facts(op, app_label, state))
        if state is not None:
            try:
                op.state_forwards(app_label, state)
            except Exception:
                state = None
    return state


def needs_state(operations):
    """Whether any of `operations` (SeparateDatabaseAndState included) is an AlterField."""
    from django.db import migrations

    for op in operations:
        if isinstance(op, migrations.AlterField):
            return True
        if isinstance(op, migrations.SeparateDatabaseAndState):
            if needs_state(op.database_operations):
                return True
    return False


def migration_facts(loader, key):
    app_label, name = key
    migration = loader.graph.nodes[key]
    parents = loader.graph.node_map[key].parents
    dependencies = sorted([parent.key[0], parent.key[1]] for parent in parents)
    state = None
    if needs_state(migration.operations):
        try:
            state = loader.project_state(key, at_end=False)
        except Exception as exc:
            sys.stderr.write('migrations.py: no project state before %s.%s: %s: %s\n'
                             % (app_label, name, type(exc).__name__, ' '.join(str(exc).split())))
            state = None
    operations = []
    walk(migration.operations, app_label, state, operations)
    return {'name': name, 'dependencies': dependencies, 'operations': operations}


def plan(graph):
    """Every migration, in the order `migrate` applies them to an empty database."""
    seen = set()
    ordered = []
    for leaf in graph.leaf_nodes():
        for key in graph.forwards_plan(leaf):
            if key not in seen:
                seen.add(key)
                ordered.append(key)
    return ordered


def main():
    # The JSON goes to the real stdout; whatever settings, apps or Django print goes to stderr.
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    # Import the project as manage.py would: from the working directory, not from this
    # script's (temporary) directory.
    here = os.path.dirname(os.path.abspath(__file__))
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != here or here == cwd]
    sys.path.insert(0, cwd)

    try:
        import django
        django.setup()
    except Exception as exc:
        fail('cannot set up Django', exc)
    try:
        from django.db.migrations.loader import MigrationLoader
        loader = MigrationLoader(None, ignore_no_migrations=True)
        keys = plan(loader.graph)
    except Exception as exc:
        fail('cannot load the migrations', exc)

    apps = {}
    for key in keys:
        try:
            facts = migration_facts(loader, key)
        except Exception as exc:
            fail('cannot read migration %s.%s' % key, exc)
        apps.setdefault(key[0], []).append(facts)

    result = {'django': django.get_version(), 'apps': apps}
    text = json.dumps(result, sort_keys=True) + '\n'
    with os.fdopen(out_fd, 'w', encoding='ascii') as out:
        out.write(text)


if __name__ == '__main__':
    main()
