//! The pattern list of a configuration: every `block`/`allow` pattern
//! with its action and where it came from (file line, flag), checked as it
//! is added. The config file, the dnsmasq flags and auto mode all add here.

use std::path::PathBuf;

use anyhow::{bail, Result};
use dnsfast_common::pattern::{Action, Pattern};

/// Where a pattern came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    File { path: PathBuf, line: usize },
    Flag(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File { path, line: 0 } => write!(f, "{}", path.display()),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Patterns with their actions; a name in both lists is an error.
#[derive(Clone, Debug, Default)]
pub struct PatternTable {
    entries: std::collections::BTreeMap<Pattern, (Action, Origin)>,
}

impl PatternTable {
    pub(crate) fn add(&mut self, text: &str, action: Action, origin: Origin) -> Result<()> {
        let p =
            Pattern::parse(text).map_err(|e| anyhow::anyhow!("{origin}: pattern '{text}': {e}"))?;
        if let Some((prev, prev_origin)) = self.entries.get(&p) {
            if *prev != action {
                bail!("{origin}: pattern '{p}' is both {action} and {prev} (at {prev_origin}); pick one");
            }
            return Ok(());
        }
        self.entries.insert(p, (action, origin));
        Ok(())
    }

    /// The action of the pattern written exactly `name` (canonical form).
    pub(crate) fn action_of(&self, name: &str) -> Option<Action> {
        let key = Pattern {
            name: name.to_string(),
        };
        self.entries.get(&key).map(|(a, _)| *a)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Pattern, Action)> {
        self.entries.iter().map(|(p, (a, _))| (p, *a))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
