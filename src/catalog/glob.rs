//! Lanes' `paths` globs: `*` stays within a path component, `**` crosses them.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// A glob as lanes' `paths` use it: `*` stays within a path component, `**` crosses them.
pub fn compile_glob(glob: &str) -> Result<Glob, String> {
    GlobBuilder::new(glob).literal_separator(true).build().map_err(|e| e.kind().to_string())
}

pub fn glob_set(globs: &[String]) -> GlobSet {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        // Globs were validated with the catalog.
        if let Ok(g) = compile_glob(glob) {
            builder.add(g);
        }
    }
    builder.build().unwrap_or_else(|_| GlobSet::empty())
}
