//! `WWW-Authenticate` parsing (RFC 7235 §4.1), as registries send it:
//! `Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"`.
//!
//! A header may carry several challenges (`Basic realm="x", Bearer realm="y"`),
//! quoted values may contain commas and escaped quotes, and parameter names
//! are case-insensitive. Hand-written because no maintained crate parses
//! multi-challenge headers with auth-params; this one is small and fuzzed by
//! property tests.

use std::collections::BTreeMap;

/// One challenge: a scheme (lowercased) and its parameters (names lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses every challenge in a header value. Malformed tails are dropped;
/// what was understood before them is kept.
pub fn parse(header: &str) -> Vec<Challenge> {
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        p.skip_ws_and_commas();
        let Some(scheme) = p.token() else { break };
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: BTreeMap::new(),
        };
        loop {
            p.skip_ws();
            let save = p.i;
            let Some(name) = p.token() else { break };
            p.skip_ws();
            if !p.eat(b'=') {
                // Not `name=`: the next challenge's scheme starts here.
                p.i = save;
                break;
            }
            p.skip_ws();
            let value = if p.peek_is(b'"') {
                match p.quoted() {
                    Some(v) => v,
                    None => {
                        out.push(challenge);
                        return out;
                    }
                }
            } else {
                p.token().unwrap_or_default()
            };
            challenge.params.insert(name.to_ascii_lowercase(), value);
            p.skip_ws();
            if !p.eat(b',') {
                break;
            }
        }
        out.push(challenge);
        if p.i >= p.s.len() {
            break;
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek_is(&self, b: u8) -> bool {
        self.s.get(self.i) == Some(&b)
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.peek_is(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn skip_ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_ws_and_commas(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    /// RFC 7230 `token` (tchar+), plus `/` and `:` seen in unquoted URLs.
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(&c) = self.s.get(self.i) {
            let tchar = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c);
            if !tchar {
                break;
            }
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn quoted(&mut self) -> Option<String> {
        debug_assert!(self.peek_is(b'"'));
        self.i += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            match c {
                b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    let &next = self.s.get(self.i)?;
                    self.i += 1;
                    out.push(next);
                }
                _ => out.push(c),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bearer_with_scope_containing_commas() {
        let c = parse(
            r#"Bearer realm="http://127.0.0.1:5004/token",service="regtest-registry",scope="repository:demo/app:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("http://127.0.0.1:5004/token"));
        assert_eq!(c[0].param("service"), Some("regtest-registry"));
        assert_eq!(c[0].param("scope"), Some("repository:demo/app:pull,push"));
    }

    #[test]
    fn error_param_and_case() {
        let c = parse(r#"BEARER Realm="r", Service="s", error="invalid_token""#);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("r"));
        assert_eq!(c[0].param("error"), Some("invalid_token"));
    }

    #[test]
    fn several_challenges() {
        let c = parse(r#"Basic realm="basic-realm", Bearer realm="https://a/t",service="x""#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("basic-realm"));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("service"), Some("x"));
    }

    #[test]
    fn escapes_and_unquoted() {
        let c = parse(r#"Bearer realm="a\"b,c", service=plain"#);
        assert_eq!(c[0].param("realm"), Some("a\"b,c"));
        assert_eq!(c[0].param("service"), Some("plain"));
    }

    #[test]
    fn bare_scheme_and_garbage() {
        assert_eq!(parse("Basic")[0].scheme, "basic");
        assert!(parse("").is_empty());
        let c = parse(r#"Bearer realm="unterminated"#);
        assert_eq!(c[0].scheme, "bearer");
        assert!(c[0].param("realm").is_none());
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn round_trips_quoted_values(realm in "[ -~&&[^\"\\\\]]{0,40}", service in "[a-z0-9.-]{1,20}") {
            let h = format!("Bearer realm=\"{realm}\",service=\"{service}\"");
            let c = parse(&h);
            prop_assert_eq!(c[0].param("realm"), Some(realm.as_str()));
            prop_assert_eq!(c[0].param("service"), Some(service.as_str()));
        }
    }
}
