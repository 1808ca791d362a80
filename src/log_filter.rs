//! The log filter shared by the CLI and pod mode.

use std::str::FromStr;

use tracing_subscriber::filter::{LevelFilter, Targets};

/// The filter from the environment variable `var` (directives such as
/// `debug` or `info,streamdisk=trace,hyper=warn`) when it is set and
/// parses, else `level` (`error`, `info`, `debug` or `trace`) for every
/// target.
///
/// `Targets` rather than `EnvFilter`: the same `target=level` directives,
/// without the span and field matching that brings a regex engine into the
/// binary (about 0.3 MB of code, whose pages count against a pod's memory).
pub fn log_filter(var: &str, level: &str) -> Targets {
    let default =
        || Targets::new().with_default(LevelFilter::from_str(level).unwrap_or(LevelFilter::INFO));
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Targets::from_str(&v).unwrap_or_else(|e| {
            eprintln!("ignoring {var}={v:?}: {e}");
            default()
        }),
        _ => default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_and_levels() {
        let t = Targets::from_str("info,streamdisk=trace").expect("parses");
        assert!(t.would_enable("streamdisk::source", &tracing::Level::TRACE));
        assert!(!t.would_enable("hyper", &tracing::Level::DEBUG));
        let d = log_filter("STREAMDISK_TEST_UNSET_LOG_VAR", "debug");
        assert!(d.would_enable("hyper", &tracing::Level::DEBUG));
        assert!(!d.would_enable("hyper", &tracing::Level::TRACE));
    }
}
