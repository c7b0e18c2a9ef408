//! The `pullbroker` binary, run as a user would, against real registries.

use std::process::{Command, Output, Stdio};

use pullbroker_testenv::{process, skopeo, Env, PASSWORD, REPO, USER};

fn pullbroker(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullbroker"));
    // Never pick up the developer's own ~/.docker/config.json.
    cmd.args(args).env("DOCKER_CONFIG", "/nonexistent");
    process::run_with_stdin(
        &mut cmd,
        stdin.unwrap_or_default().as_bytes(),
        std::time::Duration::from_secs(120),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_no_secret(out: &Output, secret: &str) {
    assert!(
        !text(&out.stdout).contains(secret),
        "stdout leaked the secret"
    );
    assert!(
        !text(&out.stderr).contains(secret),
        "stderr leaked the secret"
    );
}

/// A Secret manifest made by `pullbroker secret create` itself.
fn secret_file(dir: &std::path::Path, registry: &str, password: &str) -> std::path::PathBuf {
    let out = pullbroker(
        &[
            "secret",
            "create",
            "--registry",
            registry,
            "--username",
            USER,
            "--password-stdin",
            "--name",
            "corp-pull",
            "--namespace",
            "team-a",
        ],
        Some(&format!("{password}\n")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = dir.join(format!("secret-{}.yaml", registry.replace(':', "_")));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

#[test]
fn resolves_like_skopeo_with_secret_and_docker_config() {
    let env = Env::shared();
    let dir = tempfile::tempdir().unwrap();
    // Basic registry via a Secret manifest; token registry via a docker config.
    let secret = secret_file(dir.path(), &env.basic.host(), PASSWORD);
    let docker_config = dir.path().join("config.json");
    std::fs::write(
        &docker_config,
        format!(
            r#"{{"auths":{{"http://{}/v2/":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#,
            env.token.host()
        ),
    )
    .unwrap();
    let images = [
        env.image(&env.anon, "v1"),
        env.image(&env.anon, "multi-docker"),
        env.image(&env.basic, "multi"),
        env.image(&env.token, "v1-docker"),
    ];
    let mut args = vec![
        "resolve",
        "--secret",
        secret.to_str().unwrap(),
        "--docker-config",
        docker_config.to_str().unwrap(),
    ];
    args.extend(images.iter().map(String::as_str));
    let out = pullbroker(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), images.len());
    for (image, line) in images.iter().zip(&lines) {
        let creds = (!image.starts_with(&env.anon.host())).then_some((USER, PASSWORD));
        assert_eq!(
            line,
            &format!("{image}@{}", skopeo::digest(image, creds).unwrap())
        );
    }
    assert_no_secret(&out, PASSWORD);
}

#[test]
fn reads_stdin_and_reports_each_failure_in_json() {
    let env = Env::shared();
    let input = format!(
        "# images to pin\n{}\n\n{}\nNot/A/Valid:Ref\n{}/{REPO}@sha256:{}\n",
        env.image(&env.anon, "v1"),
        env.image(&env.anon, "missing-tag"),
        env.anon.host(),
        "a".repeat(64)
    );
    let out = pullbroker(&["resolve", "-o", "json", "-"], Some(&input));
    assert_eq!(out.status.code(), Some(1), "some images failed");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = json.as_array().unwrap();
    assert_eq!(items.len(), 4, "comments and blank lines are skipped");
    assert_eq!(items[0]["digest"], env.fixtures.tags["v1"].as_str());
    assert_eq!(
        items[0]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(items[1]["error"]["class"], "not_found");
    assert_eq!(items[2]["error"]["class"], "invalid_reference");
    assert!(items[2]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("lowercase"));
    assert_eq!(
        items[3]["digest"],
        format!("sha256:{}", "a".repeat(64)),
        "digest refs need no registry"
    );
    assert!(text(&out.stderr).contains("2 of 4 image(s) failed"));
}

#[test]
fn wrong_password_is_a_clear_error_without_the_password() {
    let env = Env::shared();
    let dir = tempfile::tempdir().unwrap();
    let wrong = "wrong-CANARY-pass";
    let secret = secret_file(dir.path(), &env.token.host(), wrong);
    let image = env.image(&env.token, "v1");
    let out = pullbroker(
        &["resolve", "--secret", secret.to_str().unwrap(), &image],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("unauthorized") && err.contains(&env.token.host()) && err.contains(REPO),
        "{err}"
    );
    assert_no_secret(&out, wrong);
}

#[test]
fn platform_flag_pins_the_platform_manifest() {
    let env = Env::shared();
    let image = env.image(&env.anon, "multi");
    let out = pullbroker(&["resolve", "--platform", "linux/arm64", &image], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("{image}@{}", env.fixtures.platforms["linux/arm64"])
    );
    let out = pullbroker(&["resolve", "--platform", "linux", &image], None);
    assert_eq!(out.status.code(), Some(2), "usage error");
    assert!(text(&out.stderr).contains("os/arch"));
}

#[test]
fn secret_inspect_shows_kinds_users_and_jwt_expiry_never_secrets() {
    let dir = tempfile::tempdir().unwrap();
    // A JWT-shaped password (as cloud registries hand out) with a known exp.
    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjE3OTUzNDQ0MzF9.c2lnbmF0dXJl";
    let path = secret_file(dir.path(), "registry.corp.example:5000", jwt);
    let out = pullbroker(&["secret", "inspect", path.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("Secret (kubernetes.io/dockerconfigjson) team-a/corp-pull"),
        "{shown}"
    );
    assert!(
        shown.contains("registry.corp.example:5000")
            && shown.contains("basic")
            && shown.contains(USER),
        "{shown}"
    );
    // exp 1795344431 = 2026-11-22T10:47:11Z, already past.
    assert!(
        shown.contains("2026-11-22T10:47:11Z (expired)"),
        "JWT expiry shown: {shown}"
    );
    assert_no_secret(&out, jwt);
    assert_no_secret(&out, "c2lnbmF0dXJl");

    let out = pullbroker(
        &["secret", "inspect", "-o", "json", path.to_str().unwrap()],
        None,
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["username"], USER);
    assert_eq!(json[0]["expired"], true);
    assert_no_secret(&out, jwt);
}

#[test]
fn secret_validate_reports_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = secret_file(dir.path(), "r.example", "hunter2-CANARY");
    let bad_json = dir.path().join("bad.yaml");
    std::fs::write(&bad_json, "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{\"auths\":{\"r.example\":{\"auth\":\"bm9jb2xvbg==\",\"password\":\"hunter2-CANARY\"}}}'\n").unwrap();
    let wrong_type = dir.path().join("opaque.yaml");
    std::fs::write(
        &wrong_type,
        "apiVersion: v1\nkind: Secret\ntype: Opaque\ndata: {}\n",
    )
    .unwrap();
    let out = pullbroker(&["secret", "validate", good.to_str().unwrap()], None);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("valid Secret (kubernetes.io/dockerconfigjson), 1 registry"));
    let out = pullbroker(
        &[
            "secret",
            "validate",
            good.to_str().unwrap(),
            bad_json.to_str().unwrap(),
            wrong_type.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(report.contains(r#"bad.yaml: invalid: data[".dockerconfigjson"]: auths["r.example"].auth: must decode to "username:password""#), "{report}");
    assert!(
        report.contains(r#"opaque.yaml: invalid: type is "Opaque""#),
        "{report}"
    );
    assert_no_secret(&out, "hunter2-CANARY");
}

#[test]
fn secret_create_refuses_bad_input() {
    let out = pullbroker(
        &[
            "secret",
            "create",
            "--registry",
            "r.io",
            "--username",
            "u",
            "--password-stdin",
            "--name",
            "Bad_Name",
            "--namespace",
            "ns",
        ],
        Some("pw"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("secret name \"Bad_Name\""));
    let out = pullbroker(
        &[
            "secret",
            "create",
            "--registry",
            "r.io",
            "--username",
            "u",
            "--password-stdin",
            "--name",
            "ok",
            "--namespace",
            "ns",
        ],
        Some("\n"),
    );
    assert!(text(&out.stderr).contains("empty"));
    let out = pullbroker(
        &[
            "secret",
            "create",
            "--registry",
            "r.io",
            "--username",
            "u",
            "--name",
            "ok",
        ],
        Some("pw"),
    );
    assert_eq!(out.status.code(), Some(2), "--password-stdin is required");
}

/// A child that exits on a usage error before reading its input is an
/// answer, not a test failure. 1 MiB is far beyond a pipe's buffer, so the
/// writer always meets the closed pipe: the old helper failed here every time.
#[test]
fn child_exiting_before_reading_stdin_is_not_a_failure() {
    let input = "x".repeat(1 << 20);
    for _ in 0..20 {
        let out = pullbroker(&["secret", "create", "--no-such-flag"], Some(&input));
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains("--no-such-flag"));
    }
}

/// On a terminal, a large batch shows a progress bar (on stderr); piped, it does not.
#[test]
fn progress_bar_on_a_terminal_only() {
    let env = Env::shared();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    let images: Vec<String> = (0..25)
        .map(|i| env.image(&env.anon, if i % 2 == 0 { "v1" } else { "multi" }))
        .collect();
    std::fs::write(&list, images.join("\n")).unwrap();
    let bin = env!("CARGO_BIN_EXE_pullbroker");
    // `script` runs the command on a pseudo-terminal, as a person's shell would.
    let cmd = format!("{bin} resolve --no-default-config -f {}", list.display());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    assert!(out.status.success(), "{}", text(&out.stdout));
    let screen = text(&out.stdout);
    assert!(
        screen.contains("resolving"),
        "progress bar drawn on the terminal: {screen:?}"
    );
    assert_eq!(screen.matches("@sha256:").count(), 25);
    let piped = pullbroker(
        &[
            "resolve",
            "--no-default-config",
            "-f",
            list.to_str().unwrap(),
        ],
        None,
    );
    assert!(piped.status.success());
    assert!(
        !text(&piped.stderr).contains("resolving"),
        "no progress bar when not a terminal"
    );
}

/// Docker credential helpers, as Docker runs them: `docker-credential-NAME
/// get` with the registry on stdin. One that answers gives the credentials;
/// one with nothing stored means anonymous (its documented answer); one that
/// fails, is missing or hangs is an error naming it — never anonymous.
#[test]
fn credential_helpers_answer_or_fail_by_name() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::shared();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("calls.log");
    let helper = |name: &str, body: &str| {
        let path = bin.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    // Records what it was asked (server on stdin), answers for the basic registry.
    helper(
        "ok",
        &format!(
            "[ \"$1\" = get ] || exit 2\nread -r server || true\necho \"$server\" >> {log}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"",
            log = log.display()
        ),
    );
    helper(
        "empty",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    helper("broken", "echo 'boom: keyring locked' >&2; exit 3");
    helper("slow", "exec sleep 60");
    let config = |helpers: &str| {
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{}},"credHelpers":{{{helpers}}}}}"#),
        )
        .unwrap();
        path
    };
    let run = |config: &std::path::Path, images: &[String]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullbroker"));
        cmd.args(["resolve", "-o", "json", "--docker-config"])
            .arg(config)
            .args(images)
            .env("DOCKER_CONFIG", "/nonexistent")
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            );
        process::run_with_stdin(&mut cmd, b"", std::time::Duration::from_secs(120))
    };
    let basic = env.image(&env.basic, "multi");
    let anon = env.image(&env.anon, "v1");

    // ok: the helper's credentials reach the htpasswd registry, once per registry.
    let c = config(&format!(
        r#""{}":"ok","{}":"empty""#,
        env.basic.host(),
        env.anon.host()
    ));
    let out = run(&c, &[basic.clone(), basic.clone(), anon.clone()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = skopeo::digest(&basic, Some((USER, PASSWORD))).unwrap();
    assert_eq!(v[0]["digest"], digest.to_string(), "{v}");
    assert_eq!(
        v[2]["digest"],
        skopeo::digest(&anon, None).unwrap().to_string(),
        "nothing stored: anonymous"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("{}\n", env.basic.host())
    );
    assert_no_secret(&out, PASSWORD);

    // broken, missing, slow: each image fails, naming its helper; others still resolve.
    let c = config(&format!(
        r#""{}":"broken","{}":"missing""#,
        env.basic.host(),
        env.anon.host()
    ));
    let out = run(&c, &[basic.clone(), anon.clone()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = |i: usize| {
        v[i]["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        err(0).contains("docker-credential-broken") && err(0).contains("boom: keyring locked"),
        "{v}"
    );
    assert!(
        err(1).contains("docker-credential-missing") && err(1).contains("not on PATH"),
        "{v}"
    );
    assert_eq!(v[0]["error"]["class"], "credential_helper", "{v}");

    // A helper that hangs is stopped after the timeout; the others resolve.
    let token = env.image(&env.token, "v1");
    let c = config(&format!(
        r#""{}":"slow","{}":"ok""#,
        env.token.host(),
        env.basic.host()
    ));
    let out = run(&c, &[token, basic]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = v[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("docker-credential-slow") && message.contains("did not answer"),
        "{v}"
    );
    assert_eq!(v[1]["digest"], digest.to_string(), "{v}");
}
