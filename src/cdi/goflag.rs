//! Command lines as Go's `flag` package reads them, for the CDI tools that
//! streamdisk stands in for (`cdi-containerimage-server`,
//! `cdi-image-size-detection`, `cdi-source-update-poller`): CDI's
//! controllers start them with single-dash flags (`-image-path /data/x`),
//! which clap would not take.
//!
//! The rules are Go's: `-name value`, `-name=value`, one or two dashes;
//! parsing stops at the first argument that is not a flag or after `--`;
//! `-h` and `-help` ask for the usage. Only string and integer flags exist
//! here (none of these tools has a boolean one).
//!
//! Std only: `cdi-containerimage-server` compiles this file into its own
//! small binary (`#[path]`), which must not link the library.

use std::fmt;

/// What a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Any text.
    Str,
    /// An integer, as Go's `strconv.ParseInt(s, 0, 64)` reads it; the value
    /// handed back is in decimal.
    // Only the image server (`-p`) has one; the library's tools do not.
    #[allow(dead_code)]
    Int,
}

/// One flag a tool defines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    /// Its name, without the dash.
    pub name: &'static str,
    /// What it takes.
    pub kind: Kind,
    /// Its value when not given.
    pub default: &'static str,
    /// One line of help.
    pub usage: &'static str,
}

/// Why a command line was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FlagError {
    /// `-h` or `-help`: print the usage and exit 0, as Go does.
    Help,
    /// Go's words for a bad command line (printed before the usage).
    Bad(String),
}

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagError::Help => f.write_str("flag: help requested"),
            FlagError::Bad(m) => f.write_str(m),
        }
    }
}

/// Parses `args` (after the program name) against `specs`; the values come
/// back in the order of `specs`, defaults filled in. Arguments after the
/// flags are ignored, as these tools ignore them.
pub(crate) fn parse(args: &[String], specs: &[Spec]) -> Result<Vec<String>, FlagError> {
    let mut values: Vec<String> = specs.iter().map(|s| s.default.to_string()).collect();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let Some(body) = arg.strip_prefix('-').filter(|b| !b.is_empty()) else {
            break; // not a flag: the flags end here
        };
        let body = match body.strip_prefix('-') {
            Some("") => break, // `--` ends the flags
            Some(b) => b,
            None => body,
        };
        if body.starts_with('-') || body.starts_with('=') {
            return Err(FlagError::Bad(format!("bad flag syntax: {arg}")));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(i) = specs.iter().position(|s| s.name == name) else {
            if name == "h" || name == "help" {
                return Err(FlagError::Help);
            }
            return Err(FlagError::Bad(format!(
                "flag provided but not defined: -{name}"
            )));
        };
        let Some(value) = inline.or_else(|| rest.next().cloned()) else {
            return Err(FlagError::Bad(format!("flag needs an argument: -{name}")));
        };
        let value = match specs.get(i).map(|s| s.kind) {
            Some(Kind::Int) => go_parse_int(&value).map(|n| n.to_string()).map_err(|why| {
                FlagError::Bad(format!("invalid value {value:?} for flag -{name}: {why}"))
            })?,
            _ => value,
        };
        if let Some(slot) = values.get_mut(i) {
            *slot = value;
        }
    }
    Ok(values)
}

/// Go's usage text (`flag.PrintDefaults` after `Usage of NAME:`): flags
/// sorted by name, non-empty defaults shown.
pub(crate) fn usage(program: &str, specs: &[Spec]) -> String {
    let mut sorted: Vec<&Spec> = specs.iter().collect();
    sorted.sort_by_key(|s| s.name);
    let mut out = format!("Usage of {program}:\n");
    for s in sorted {
        let (kind, default) = match s.kind {
            Kind::Str => ("string", format!("{:?}", s.default)),
            Kind::Int => ("int", s.default.to_string()),
        };
        out.push_str(&format!("  -{} {kind}\n    \t{}", s.name, s.usage));
        if !s.default.is_empty() && s.default != "0" {
            out.push_str(&format!(" (default {default})"));
        }
        out.push('\n');
    }
    out
}

/// `strconv.ParseInt(s, 0, 64)`: an optional sign, then decimal, `0x` hex,
/// `0o` or a leading `0` octal, `0b` binary; the error is Go's word for it.
fn go_parse_int(s: &str) -> Result<i64, &'static str> {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..).unwrap_or_default()),
        Some(b'+') => (false, s.get(1..).unwrap_or_default()),
        _ => (false, s),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(b) = lower.strip_prefix("0x") {
        (16, b)
    } else if let Some(b) = lower.strip_prefix("0o") {
        (8, b)
    } else if let Some(b) = lower.strip_prefix("0b") {
        (2, b)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower.get(1..).unwrap_or_default())
    } else {
        (10, lower.as_str())
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return Err("parse error");
    }
    let magnitude = u64::from_str_radix(body, radix).map_err(|_| "value out of range")?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
            .ok_or("value out of range")
    } else {
        i64::try_from(magnitude).map_err(|_| "value out of range")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[Spec] = &[
        Spec {
            name: "p",
            kind: Kind::Int,
            default: "8100",
            usage: "server port",
        },
        Spec {
            name: "image-dir",
            kind: Kind::Str,
            default: ".",
            usage: "directory to serve",
        },
        Spec {
            name: "empty",
            kind: Kind::Str,
            default: "",
            usage: "no default",
        },
    ];

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn forms_go_accepts() {
        let v = parse(&args(&["-p", "9000", "--image-dir=/disk"]), SPECS).expect("parse");
        assert_eq!(v, ["9000", "/disk", ""]);
        let v = parse(&args(&["--p=0x10", "-image-dir", "-x"]), SPECS).expect("parse");
        assert_eq!(v, ["16", "-x", ""], "a value may start with a dash");
        let v = parse(&args(&[]), SPECS).expect("parse");
        assert_eq!(v, ["8100", ".", ""]);
        // Flags end at the first non-flag and after `--`.
        let v = parse(&args(&["pos", "-p", "1"]), SPECS).expect("parse");
        assert_eq!(v, ["8100", ".", ""]);
        let v = parse(&args(&["--", "-p", "1"]), SPECS).expect("parse");
        assert_eq!(v, ["8100", ".", ""]);
        let v = parse(&args(&["-", "-p", "1"]), SPECS).expect("parse");
        assert_eq!(v, ["8100", ".", ""]);
        let v = parse(&args(&["-empty="]), SPECS).expect("parse");
        assert_eq!(v, ["8100", ".", ""]);
    }

    #[test]
    fn errors_in_go_words() {
        assert_eq!(parse(&args(&["-h"]), SPECS), Err(FlagError::Help));
        assert_eq!(parse(&args(&["--help"]), SPECS), Err(FlagError::Help));
        let bad = |a: &[&str]| match parse(&args(a), SPECS) {
            Err(FlagError::Bad(m)) => m,
            other => panic!("{a:?}: {other:?}"),
        };
        assert_eq!(bad(&["-q"]), "flag provided but not defined: -q");
        assert_eq!(bad(&["-p"]), "flag needs an argument: -p");
        assert_eq!(bad(&["---p"]), "bad flag syntax: ---p");
        assert_eq!(bad(&["-=x"]), "bad flag syntax: -=x");
        assert_eq!(
            bad(&["-p", "80a"]),
            "invalid value \"80a\" for flag -p: parse error"
        );
        assert_eq!(
            bad(&["-p=99999999999999999999"]),
            "invalid value \"99999999999999999999\" for flag -p: value out of range"
        );
    }

    #[test]
    fn go_integers() {
        assert_eq!(go_parse_int("8100"), Ok(8100));
        assert_eq!(go_parse_int("-12"), Ok(-12));
        assert_eq!(go_parse_int("017"), Ok(15));
        assert_eq!(go_parse_int("0o17"), Ok(15));
        assert_eq!(go_parse_int("0b101"), Ok(5));
        assert_eq!(go_parse_int("0"), Ok(0));
        assert_eq!(go_parse_int("-9223372036854775808"), Ok(i64::MIN));
        assert!(go_parse_int("9223372036854775808").is_err());
        assert!(go_parse_int("").is_err());
        assert!(go_parse_int("0x").is_err());
        assert!(go_parse_int("08").is_err());
    }

    #[test]
    fn usage_like_go() {
        assert_eq!(
            usage("/shared/server", SPECS),
            "Usage of /shared/server:\n  -empty string\n    \tno default\n  -image-dir string\n    \tdirectory to serve (default \".\")\n  -p int\n    \tserver port (default 8100)\n"
        );
    }
}
