//! The Go/klog command-line flags CDI passes to the importer.
//!
//! The image entrypoint is `cdi-importer -alsologtostderr` and the controller
//! appends `-v=<N>`. Go's `flag` package accepts `-name`, `--name`,
//! `-name=value` and `--name=value`. Only the verbosity means anything to us;
//! every other flag is accepted and reported (at debug level) as ignored, so that
//! a future flag CDI adds can never stop an import from starting.

use std::ffi::OsString;

/// The flags after parsing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KlogFlags {
    /// `-v=N`: klog verbosity, when given.
    pub verbosity: Option<u8>,
    /// Flags accepted and ignored, as given (for a debug log line).
    pub ignored: Vec<String>,
    /// `-h` or `-help`: print the usage and exit 0, as a Go program does.
    pub help: bool,
}

/// Parses klog-style flags. Never fails: anything unrecognised is ignored.
///
/// `-v` takes its value either inline (`-v=3`) or as the next argument
/// (`-v 3`), as Go's `flag` package allows for non-boolean flags.
pub(crate) fn parse(args: &[OsString]) -> KlogFlags {
    let mut flags = KlogFlags::default();
    let mut iter = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = iter.next() {
        let body = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .unwrap_or(&arg);
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            flags.help = true;
        } else if name == "v" {
            let value = match value {
                Some(v) => Some(v),
                None => iter.next(),
            };
            match value.as_deref().map(str::parse::<u8>) {
                Some(Ok(n)) => flags.verbosity = Some(n),
                _ => flags.ignored.push(arg.clone()),
            }
        } else {
            flags.ignored.push(arg.clone());
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn cdi_default_args() {
        let f = parse(&os(&["-alsologtostderr", "-v=3"]));
        assert_eq!(f.verbosity, Some(3));
        assert_eq!(f.ignored, vec!["-alsologtostderr".to_string()]);
    }

    #[test]
    fn go_flag_spellings() {
        assert_eq!(parse(&os(&["--v=2"])).verbosity, Some(2));
        assert_eq!(parse(&os(&["-v", "4"])).verbosity, Some(4));
        let f = parse(&os(&["-logtostderr=false", "-stderrthreshold", "-v=x"]));
        assert_eq!(f.verbosity, None);
        assert_eq!(f.ignored.len(), 3);
        assert_eq!(parse(&[]), KlogFlags::default());
        assert!(parse(&os(&["-alsologtostderr", "-h"])).help);
        assert!(parse(&os(&["--help"])).help);
        assert!(!parse(&os(&["-hh"])).help);
    }
}
