//! Which images an `auths` key serves: the key parsed as kubelet parses it
//! (scheme, host labels, port, path) and matched label by label with Go's
//! `filepath.Match`, most specific first — `k8s.io/kubernetes/pkg/credentialprovider`'s
//! rules, apart from the two documented choices in the parent module.

use crate::reference::{Reference, DOCKER_HUB, DOCKER_HUB_LEGACY};

/// Where an entry applies, parsed from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPattern {
    pub(super) labels: Vec<String>,
    pub(super) port: Option<String>,
    /// Path with a leading `/`, or empty for "whole registry".
    pub(super) path: String,
}

impl AuthPattern {
    /// Parses an `auths` key the way kubelet does.
    pub fn parse(key: &str) -> Result<Self, String> {
        let rest = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        if rest.contains("://") {
            return Err("key has an unsupported URL scheme (only http:// and https://)".into());
        }
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = match path {
            p if p.starts_with("/v1/") || p.starts_with("/v2/") => &p[3..],
            p => p,
        };
        let path = if path == "/" { "" } else { path };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let close = v6.find(']').ok_or("key has an unclosed '[' in its host")?;
            let port = v6[close + 1..].strip_prefix(':').map(str::to_string);
            (&v6[..close], port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p.to_string())),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("key has no registry host".into());
        }
        if let Some(p) = &port {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5 {
                return Err(format!("key has an invalid port {p:?}"));
            }
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '@')
        {
            return Err("key has an invalid character in its host".into());
        }
        let host = host.to_ascii_lowercase();
        let host = if host == DOCKER_HUB_LEGACY && port.is_none() {
            DOCKER_HUB.to_string()
        } else {
            host
        };
        Ok(AuthPattern {
            labels: host.split('.').map(str::to_string).collect(),
            port,
            path: path.to_string(),
        })
    }

    /// Does this pattern apply to `image`?
    pub fn matches(&self, image: &Reference) -> bool {
        let host = image.host().to_ascii_lowercase();
        let port = image.port().map(|p| p.to_string());
        if port != self.port {
            return false;
        }
        let target: Vec<&str> = host.split('.').collect();
        if target.len() != self.labels.len() {
            return false;
        }
        if !self
            .labels
            .iter()
            .zip(&target)
            .all(|(g, t)| glob_label(g, t))
        {
            return false;
        }
        format!("/{}", image.repository()).starts_with(&self.path)
    }

    fn wildcards(&self) -> usize {
        self.labels
            .iter()
            .filter(|l| l.contains(['*', '?']))
            .count()
    }

    /// Higher is more specific: longer path, then fewer wildcard labels.
    pub(super) fn specificity(&self) -> (usize, std::cmp::Reverse<usize>) {
        (self.path.len(), std::cmp::Reverse(self.wildcards()))
    }
}

/// Go's `filepath.Match` for one host label, as kubelet matches `auths`
/// keys: `*`, `?`, character classes `[a-z]`, `[^0-9]`, and `\` escapes. A
/// malformed pattern matches nothing (kubelet ignores Match's error).
/// Written by hand: glob crates follow shell rules (`[!…]`, no `^`), not Go's.
pub(super) fn glob_label(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Memoized by position: plain backtracking is exponential in the number
    // of `*`s (found by the fuzzer: a key of many stars stalled matching).
    let mut memo = vec![None; (p.len() + 1) * (t.len() + 1)];
    go_match(&p, 0, &t, 0, &mut memo).unwrap_or(false)
}

/// `None`: malformed pattern.
fn go_match(
    p: &[char],
    pi: usize,
    t: &[char],
    ti: usize,
    memo: &mut Vec<Option<Option<bool>>>,
) -> Option<bool> {
    let key = pi * (t.len() + 1) + ti;
    if let Some(known) = memo[key] {
        return known;
    }
    let result = match p.get(pi) {
        None => Some(ti == t.len()),
        Some('*') => {
            // Every split point; `*` never crosses a '/' (none in a label).
            let mut any = Some(false);
            for i in ti..=t.len() {
                match go_match(p, pi + 1, t, i, memo) {
                    Some(true) => {
                        any = Some(true);
                        break;
                    }
                    Some(false) => {}
                    None => {
                        any = None;
                        break;
                    }
                }
            }
            any
        }
        Some('?') => match t.get(ti) {
            Some(_) => go_match(p, pi + 1, t, ti + 1, memo),
            None => go_match(p, pi + 1, t, ti, memo).map(|_| false),
        },
        Some('[') => {
            let (matched, used) = match class(&p[pi + 1..], t.get(ti).copied()) {
                Some(c) => c,
                None => {
                    memo[key] = Some(None);
                    return None;
                }
            };
            match t.get(ti) {
                Some(_) if matched => go_match(p, pi + 1 + used, t, ti + 1, memo),
                _ => go_match(p, pi + 1 + used, t, ti, memo).map(|_| false),
            }
        }
        Some('\\') => match p.get(pi + 1) {
            None => None,
            Some(c) => match t.get(ti) {
                Some(first) if first == c => go_match(p, pi + 2, t, ti + 1, memo),
                _ => Some(false),
            },
        },
        Some(c) => match t.get(ti) {
            Some(first) if first == c => go_match(p, pi + 1, t, ti + 1, memo),
            _ => Some(false),
        },
    };
    memo[key] = Some(result);
    result
}

/// A class after its `[`: whether `c` is in it, and how many pattern chars
/// it took (through the `]`). `None`: malformed.
fn class(p: &[char], c: Option<char>) -> Option<(bool, usize)> {
    let mut i = 0;
    let negated = p.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let lit = |i: &mut usize| -> Option<char> {
        let ch = *p.get(*i)?;
        if ch == '\\' {
            *i += 1;
            let e = *p.get(*i)?;
            *i += 1;
            return Some(e);
        }
        if ch == '-' || ch == ']' {
            return None;
        }
        *i += 1;
        Some(ch)
    };
    let mut found = false;
    let mut first = true;
    loop {
        if p.get(i) == Some(&']') && !first {
            i += 1;
            break;
        }
        first = false;
        let lo = lit(&mut i)?;
        let hi = if p.get(i) == Some(&'-') {
            i += 1;
            lit(&mut i)?
        } else {
            lo
        };
        if c.is_some_and(|c| lo <= c && c <= hi) {
            found = true;
        }
    }
    Some((found != negated, i))
}
