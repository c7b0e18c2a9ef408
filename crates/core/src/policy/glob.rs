//! The glob dialect of grants. Three kinds of names, three rules:
//!
//! - **Names** (namespaces, service accounts, grant subjects): `*` matches any
//!   run of characters, `?` one character; everything else is literal and the
//!   whole name must match. `team-a` matches only `team-a`; `team-a-*` matches
//!   `team-a-dev` but neither `team-a` nor `team-ab`; `team-a*` matches both
//!   `team-a` and `team-ab` — write the dash when you mean it.
//! - **Repositories** are `/`-separated. `*` and `?` never cross a `/`: `apps/*`
//!   matches `apps/web`, not `apps/web/api`. A whole component `**` matches zero
//!   or more components: `apps/team-a/**` matches `apps/team-a`, `apps/team-a/web`
//!   and `apps/team-a/web/api`, but not `apps/team-ab`.
//! - **Registries** are `host[:port]`; `*` matches exactly one DNS label
//!   (`*.mirror.example` matches `eu.mirror.example`, not `a.eu.mirror.example`
//!   nor `mirror.example`). A port in the pattern must be present and equal in
//!   the registry; a pattern without a port matches only registries without one.
//!   Hosts compare case-insensitively.

/// Matches a name glob (`*`, `?`) against `text`, whole-string.
pub fn name_matches(pattern: &str, text: &str) -> bool {
    wildcard(pattern.as_bytes(), text.as_bytes())
}

/// Matches a repository glob against a repository path.
pub fn repository_matches(pattern: &str, repository: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let t: Vec<&str> = repository.split('/').collect();
    components(&p, &t)
}

fn components(p: &[&str], t: &[&str]) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some((&"**", rest)) => (0..=t.len()).any(|skip| components(rest, &t[skip..])),
        Some((first, rest)) => match t.split_first() {
            Some((head, tail)) => {
                wildcard(first.as_bytes(), head.as_bytes()) && components(rest, tail)
            }
            None => false,
        },
    }
}

/// Matches a registry pattern (`host[:port]`, `*` per label) against a registry.
pub fn registry_matches(pattern: &str, registry: &str) -> bool {
    let (ph, pp) = crate::reference::split_host_port(pattern);
    let (rh, rp) = crate::reference::split_host_port(registry);
    if pp != rp {
        return false;
    }
    let (ph, rh) = (ph.to_ascii_lowercase(), rh.to_ascii_lowercase());
    let pl: Vec<&str> = ph.split('.').collect();
    let rl: Vec<&str> = rh.split('.').collect();
    pl.len() == rl.len()
        && pl
            .iter()
            .zip(&rl)
            .all(|(p, r)| wildcard(p.as_bytes(), r.as_bytes()))
}

/// `*`/`?` wildcard over bytes, linear time (no backtracking blow-up).
fn wildcard(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) && p[pi] != b'*' {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Checks a glob for characters no name or path can hold, for policy validation.
pub fn validate(kind: &str, pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err(format!("empty {kind} pattern"));
    }
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{kind} pattern {pattern:?} contains whitespace"));
    }
    if kind == "repository" && pattern.split('/').any(|c| c.is_empty()) {
        return Err(format!(
            "repository pattern {pattern:?} has an empty component"
        ));
    }
    if kind == "repository" && pattern.split('/').any(|c| c.contains("**") && c != "**") {
        return Err(format!(
            "repository pattern {pattern:?}: `**` must be a whole component"
        ));
    }
    if pattern.split('/').filter(|c| *c == "**").count() > 2 {
        return Err(format!(
            "{kind} pattern {pattern:?}: at most two `**` components"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert!(name_matches("team-a", "team-a"));
        assert!(!name_matches("team-a", "team-ab"));
        assert!(!name_matches("team-a", "team-a-dev"));
        assert!(name_matches("team-a-*", "team-a-dev"));
        assert!(!name_matches("team-a-*", "team-a"));
        assert!(!name_matches("team-a-*", "team-ab"));
        assert!(name_matches("team-a*", "team-ab"));
        assert!(name_matches("*", "anything"));
        assert!(name_matches("team-?", "team-b"));
        assert!(!name_matches("team-?", "team-bc"));
        assert!(!name_matches("", "x"));
    }

    #[test]
    fn repositories() {
        assert!(repository_matches("apps/*", "apps/web"));
        assert!(!repository_matches("apps/*", "apps/web/api"));
        assert!(!repository_matches("apps/*", "apps"));
        assert!(repository_matches("apps/team-a/**", "apps/team-a"));
        assert!(repository_matches("apps/team-a/**", "apps/team-a/web/api"));
        assert!(!repository_matches("apps/team-a/**", "apps/team-ab/web"));
        assert!(!repository_matches(
            "apps/team-a/**",
            "apps/team-a-evil/web"
        ));
        assert!(repository_matches("**/web", "a/b/web"));
        assert!(repository_matches("**", "anything/at/all"));
        assert!(repository_matches("apps/**/api", "apps/api"));
        assert!(repository_matches("apps/web-*", "apps/web-1"));
        assert!(!repository_matches("apps/web", "apps/web/../secret"));
    }

    #[test]
    fn registries() {
        assert!(registry_matches(
            "registry.corp.example",
            "registry.corp.example"
        ));
        assert!(registry_matches(
            "Registry.Corp.Example",
            "registry.corp.example"
        ));
        assert!(!registry_matches(
            "registry.corp.example",
            "registry.corp.example:5000"
        ));
        assert!(registry_matches(
            "*.mirror.example:5000",
            "eu.mirror.example:5000"
        ));
        assert!(!registry_matches(
            "*.mirror.example:5000",
            "eu.mirror.example"
        ));
        assert!(!registry_matches(
            "*.mirror.example:5000",
            "a.eu.mirror.example:5000"
        ));
        assert!(!registry_matches(
            "*.mirror.example:5000",
            "mirror.example:5000"
        ));
        assert!(registry_matches("127.0.0.1:5003", "127.0.0.1:5003"));
        assert!(!registry_matches("corp.example", "corp.example.evil.com"));
        assert!(!registry_matches("corp.example", "evilcorp.example"));
    }

    proptest! {
        #[test]
        fn literal_patterns_match_only_themselves(a in "[a-z0-9-]{1,12}", b in "[a-z0-9-]{1,12}") {
            prop_assert_eq!(name_matches(&a, &b), a == b);
        }

        #[test]
        fn prefix_star_with_dash_never_matches_lookalikes(base in "[a-z]{1,8}", extra in "[a-z0-9]{1,6}") {
            // `base-*` must not match `base` + letters (no dash).
            let pattern = format!("{base}-*");
            let lookalike = format!("{base}{extra}");
            prop_assert!(!name_matches(&pattern, &lookalike));
        }

        #[test]
        fn single_star_never_crosses_a_slash(prefix in "[a-z]{1,6}", a in "[a-z]{1,6}", b in "[a-z]{1,6}") {
            let pattern = format!("{prefix}/*");
            let deep = format!("{prefix}/{a}/{b}");
            prop_assert!(!repository_matches(&pattern, &deep));
            let double = format!("{prefix}/**");
            prop_assert!(repository_matches(&double, &deep));
        }

        #[test]
        fn matching_never_panics(p in "[a-z*?/.:-]{0,20}", t in "[a-z/.:-]{0,20}") {
            let _ = name_matches(&p, &t);
            let _ = repository_matches(&p, &t);
            let _ = registry_matches(&p, &t);
        }
    }
}
