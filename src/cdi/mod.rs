//! CDI pod mode: a drop-in for `cdi-importer`.
