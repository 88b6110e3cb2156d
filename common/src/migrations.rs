//! A release's Django migration graph, as `builder package` records it from Django's own
//! loader, and what follows from two of them: which migrations a deploy applies, which a
//! rollback would leave in the database, which of those cannot be undone, and which older code
//! cannot run against.
//!
//! The builder records facts about each operation (its kind, whether Django can reverse it,
//! the field's nullability before and after); the judgement — irreversible, destructive for
//! older code — is made here, once, so the builder's plan and the installer's rollback agree.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Every app's migrations, each app's in the order Django applies them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationGraph {
    /// The Django version that loaded them.
    #[serde(default)]
    pub django: String,
    /// App label → its migrations in graph order.
    #[serde(default)]
    pub apps: BTreeMap<String, Vec<MigrationNode>>,
}

/// One migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationNode {
    pub name: String,
    /// `(app, name)` of the migrations it depends on.
    #[serde(default)]
    pub dependencies: Vec<(String, String)>,
    /// What it does to the schema, as facts (see [`Operation`]).
    #[serde(default)]
    pub operations: Vec<Operation>,
}

/// One operation of a migration, as Django's loader describes it. Fields that do not apply to
/// the kind are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The operation's class: `AddField`, `RemoveField`, `RunPython`, …
    pub kind: String,
    /// Django's own one-line description.
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub field: Option<String>,
    /// The new name (`RenameField`, `RenameModel`) or table (`AlterModelTable`).
    #[serde(default)]
    pub new_name: Option<String>,
    /// Django can undo it (`RunPython` without `reverse_code`, `RunSQL` without `reverse_sql`
    /// cannot).
    pub reversible: bool,
    /// `AddField`, `AlterField`: the field allows NULL afterwards.
    #[serde(default)]
    pub null: Option<bool>,
    /// `AddField`, `AlterField`: the field has a default (in Python or in the database).
    #[serde(default)]
    pub has_default: Option<bool>,
    /// `AddField`, `AlterField`: false when the default was a one-off given to makemigrations,
    /// so the column ends without one.
    #[serde(default)]
    pub preserve_default: Option<bool>,
    /// `AlterField`: the field allowed NULL before.
    #[serde(default)]
    pub was_null: Option<bool>,
}

impl Operation {
    fn subject(&self) -> String {
        match (&self.model, &self.field) {
            (Some(m), Some(f)) => format!("{m}.{f}"),
            (Some(m), None) => m.clone(),
            (None, Some(f)) => f.clone(),
            (None, None) => self.kind.clone(),
        }
    }

    /// Why Django cannot undo it, when it cannot.
    pub fn irreversible(&self) -> Option<String> {
        if self.reversible {
            return None;
        }
        Some(match self.kind.as_str() {
            "RunPython" => "RunPython without reverse_code".to_owned(),
            "RunSQL" => "RunSQL without reverse_sql".to_owned(),
            other => format!("{other} cannot be reversed"),
        })
    }

    /// Why code from before this operation cannot run against the schema after it, when it
    /// cannot: a field, model or table it reads is gone or renamed, or a column it does not
    /// know (so never writes) refuses NULL with no default.
    pub fn destructive(&self) -> Option<String> {
        let s = self.subject();
        let no_default = self.has_default == Some(false) || self.preserve_default == Some(false);
        match self.kind.as_str() {
            "RemoveField" => Some(format!("removes the field {s}")),
            "DeleteModel" => Some(format!("removes the model {s} (its table)")),
            "RenameField" => Some(format!(
                "renames the field {s} to {}",
                self.new_name.as_deref().unwrap_or("?")
            )),
            "RenameModel" => Some(format!(
                "renames the model {s} to {} (its table)",
                self.new_name.as_deref().unwrap_or("?")
            )),
            "AlterModelTable" => Some(format!(
                "renames the table of {s} to {}",
                self.new_name.as_deref().unwrap_or("?")
            )),
            "AddField" if self.null == Some(false) && no_default => Some(format!(
                "adds the column {s}, NOT NULL without a default (older code inserts rows without it)"
            )),
            "AlterField"
                if self.null == Some(false) && self.was_null != Some(false) && no_default =>
            {
                Some(format!("makes {s} NOT NULL without a default"))
            }
            _ => None,
        }
    }
}

/// A migration by app and name: `catalog.0002_item_price`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MigrationId {
    pub app: String,
    pub name: String,
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.app, self.name)
    }
}

/// One migration one release has and another lacks, with what a rollback past it means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStep {
    pub app: String,
    pub name: String,
    /// Why it cannot be undone; empty when it can.
    #[serde(default)]
    pub irreversible: Vec<String>,
    /// Why older code cannot run once it is applied; empty when it can.
    #[serde(default)]
    pub destructive: Vec<String>,
}

impl MigrationStep {
    pub fn id(&self) -> MigrationId {
        MigrationId {
            app: self.app.clone(),
            name: self.name.clone(),
        }
    }
}

impl MigrationGraph {
    /// Whether it has `app.name`.
    pub fn contains(&self, app: &str, name: &str) -> bool {
        self.apps
            .get(app)
            .is_some_and(|list| list.iter().any(|m| m.name == name))
    }

    /// Every migration, app by app, each app's in graph order.
    pub fn ids(&self) -> impl Iterator<Item = MigrationId> + '_ {
        self.apps.iter().flat_map(|(app, list)| {
            list.iter().map(move |m| MigrationId {
                app: app.clone(),
                name: m.name.clone(),
            })
        })
    }

    /// The migrations this graph has and `older` does not — what a deploy from `older` to
    /// this applies, or what a rollback from this to `older` leaves applied — in an order
    /// Django could apply them (dependencies first).
    pub fn beyond(&self, older: &MigrationGraph) -> Vec<MigrationStep> {
        let mut extra: BTreeMap<MigrationId, &MigrationNode> = BTreeMap::new();
        for (app, list) in &self.apps {
            for m in list {
                if !older.contains(app, &m.name) {
                    extra.insert(
                        MigrationId {
                            app: app.clone(),
                            name: m.name.clone(),
                        },
                        m,
                    );
                }
            }
        }
        // Dependencies first; an app's own order is its graph order, which the loader gave.
        let mut done: BTreeSet<MigrationId> = BTreeSet::new();
        let mut out = Vec::new();
        let position = |id: &MigrationId| -> usize {
            self.apps
                .get(&id.app)
                .and_then(|l| l.iter().position(|m| m.name == id.name))
                .unwrap_or(0)
        };
        while done.len() < extra.len() {
            let before = done.len();
            for (id, node) in &extra {
                if done.contains(id) {
                    continue;
                }
                let earlier_in_app = extra
                    .keys()
                    .filter(|o| o.app == id.app && !done.contains(*o))
                    .any(|o| position(o) < position(id));
                let waiting = node.dependencies.iter().any(|(a, n)| {
                    let dep = MigrationId {
                        app: a.clone(),
                        name: n.clone(),
                    };
                    extra.contains_key(&dep) && !done.contains(&dep)
                });
                if !earlier_in_app && !waiting {
                    done.insert(id.clone());
                    out.push(step(id, node));
                }
            }
            if done.len() == before {
                // A cycle the loader would have refused: keep the rest in name order.
                for (id, node) in &extra {
                    if done.insert(id.clone()) {
                        out.push(step(id, node));
                    }
                }
            }
        }
        out
    }

    /// For a rollback to `older`: for each app with migrations `older` lacks, the last
    /// migration `older` has in that app (`None`: none, Django's `zero`), which is where
    /// `manage.py migrate <app> <target>` takes it.
    pub fn down_targets(&self, older: &MigrationGraph) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        for (app, list) in &self.apps {
            if list.iter().all(|m| older.contains(app, &m.name)) {
                continue;
            }
            let last = older
                .apps
                .get(app)
                .and_then(|l| l.last())
                .map(|m| m.name.clone());
            out.push((app.clone(), last));
        }
        out
    }
}

fn step(id: &MigrationId, node: &MigrationNode) -> MigrationStep {
    MigrationStep {
        app: id.app.clone(),
        name: id.name.clone(),
        irreversible: node
            .operations
            .iter()
            .filter_map(Operation::irreversible)
            .collect(),
        destructive: node
            .operations
            .iter()
            .filter_map(Operation::destructive)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: &str) -> Operation {
        Operation {
            kind: kind.into(),
            description: String::new(),
            model: Some("item".into()),
            field: Some("price".into()),
            new_name: None,
            reversible: true,
            null: None,
            has_default: None,
            preserve_default: None,
            was_null: None,
        }
    }

    #[test]
    fn each_operation_kind_is_judged() {
        // Destructive for older code.
        assert_eq!(
            op("RemoveField").destructive().unwrap(),
            "removes the field item.price"
        );
        let model = Operation {
            field: None,
            ..op("DeleteModel")
        };
        assert!(model
            .destructive()
            .unwrap()
            .contains("removes the model item"));
        let renamed = Operation {
            new_name: Some("cost".into()),
            ..op("RenameField")
        };
        assert_eq!(
            renamed.destructive().unwrap(),
            "renames the field item.price to cost"
        );
        let renamed_model = Operation {
            field: None,
            new_name: Some("product".into()),
            ..op("RenameModel")
        };
        assert!(renamed_model.destructive().unwrap().contains("to product"));
        let table = Operation {
            field: None,
            new_name: Some("shop_item".into()),
            ..op("AlterModelTable")
        };
        assert!(table.destructive().unwrap().contains("shop_item"));
        // Adding a column: harmless when it may be NULL or has a default.
        let add = |null, has_default, preserve| Operation {
            null: Some(null),
            has_default: Some(has_default),
            preserve_default: Some(preserve),
            ..op("AddField")
        };
        assert_eq!(add(true, false, true).destructive(), None);
        assert_eq!(add(false, true, true).destructive(), None);
        assert!(add(false, true, false)
            .destructive()
            .unwrap()
            .contains("NOT NULL"));
        assert!(add(false, false, true).destructive().is_some());
        // Altering a column: only NULL → NOT NULL without a default.
        let alter = |was_null, null, has_default| Operation {
            was_null,
            null: Some(null),
            has_default: Some(has_default),
            preserve_default: Some(true),
            ..op("AlterField")
        };
        assert_eq!(
            alter(Some(true), false, false).destructive().unwrap(),
            "makes item.price NOT NULL without a default"
        );
        assert_eq!(alter(Some(false), false, false).destructive(), None);
        assert_eq!(alter(Some(true), false, true).destructive(), None);
        assert_eq!(alter(Some(true), true, false).destructive(), None);
        // Unknown before: judged as if it allowed NULL, the careful reading.
        assert!(alter(None, false, false).destructive().is_some());
        for harmless in [
            "CreateModel",
            "AddIndex",
            "AlterUniqueTogether",
            "RunPython",
            "RunSQL",
        ] {
            assert_eq!(op(harmless).destructive(), None, "{harmless}");
        }

        // Irreversible.
        for kind in ["AddField", "RemoveField", "RunPython", "RunSQL"] {
            assert_eq!(op(kind).irreversible(), None, "{kind}");
        }
        let one_way = |kind: &str| Operation {
            reversible: false,
            ..op(kind)
        };
        assert_eq!(
            one_way("RunPython").irreversible().unwrap(),
            "RunPython without reverse_code"
        );
        assert_eq!(
            one_way("RunSQL").irreversible().unwrap(),
            "RunSQL without reverse_sql"
        );
        assert_eq!(
            one_way("Custom").irreversible().unwrap(),
            "Custom cannot be reversed"
        );
    }

    fn node(name: &str, deps: &[(&str, &str)], ops: Vec<Operation>) -> MigrationNode {
        MigrationNode {
            name: name.into(),
            dependencies: deps
                .iter()
                .map(|(a, n)| (a.to_string(), n.to_string()))
                .collect(),
            operations: ops,
        }
    }

    #[test]
    fn what_one_graph_has_beyond_another_in_dependency_order() {
        let mut old = MigrationGraph::default();
        old.apps.insert(
            "catalog".into(),
            vec![node("0001_initial", &[("auth", "0001_initial")], vec![])],
        );
        old.apps
            .insert("auth".into(), vec![node("0001_initial", &[], vec![])]);
        let mut new = old.clone();
        new.apps.get_mut("catalog").unwrap().extend([
            node(
                "0002_item_price",
                &[("catalog", "0001_initial"), ("shop", "0001_initial")],
                vec![op("AddField")],
            ),
            node(
                "0003_fill",
                &[("catalog", "0002_item_price")],
                vec![Operation {
                    reversible: false,
                    ..op("RunPython")
                }],
            ),
        ]);
        new.apps.insert(
            "shop".into(),
            vec![node("0001_initial", &[], vec![op("RemoveField")])],
        );
        let beyond = new.beyond(&old);
        let names: Vec<String> = beyond.iter().map(|s| s.id().to_string()).collect();
        assert_eq!(
            names,
            [
                "shop.0001_initial",
                "catalog.0002_item_price",
                "catalog.0003_fill"
            ]
        );
        assert_eq!(beyond[0].destructive.len(), 1);
        assert_eq!(beyond[2].irreversible, ["RunPython without reverse_code"]);
        assert!(old.beyond(&new).is_empty());
        assert_eq!(
            new.down_targets(&old),
            [
                ("catalog".to_owned(), Some("0001_initial".to_owned())),
                ("shop".to_owned(), None)
            ]
        );
        assert!(new.contains("shop", "0001_initial"));
        assert!(!old.contains("shop", "0001_initial"));
        assert_eq!(new.ids().count(), 5);
    }

    #[test]
    fn the_builders_json_reads_into_the_graph() {
        let text = r#"{"django": "4.2.7", "apps": {"catalog": [
            {"name": "0001_initial", "dependencies": [],
             "operations": [{"kind": "CreateModel", "description": "Create model Item",
               "model": "item", "field": null, "new_name": null, "reversible": true,
               "null": null, "has_default": null, "preserve_default": null, "was_null": null}]}]}}"#;
        let g: MigrationGraph = serde_json::from_str(text).unwrap();
        assert_eq!(g.django, "4.2.7");
        assert_eq!(g.apps["catalog"][0].operations[0].kind, "CreateModel");
        let back: MigrationGraph =
            serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(back, g);
    }
}
