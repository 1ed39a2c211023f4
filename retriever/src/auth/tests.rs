use actix_web::http::header::HeaderValue;

use super::*;

fn sha(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn headers(auth: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(v) = auth {
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn toml_keys() -> String {
    format!(
        "[[keys]]\nname = \"reader\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n\
         allow_prefixes = [\"pub/\"]\ndeny_prefixes = [\"pub/secret/\"]\n\n\
         [[keys]]\nname = \"admin\"\nsha256 = \"{}\"\nscopes = [\"read\", \"delete\"]\n\n\
         [[keys]]\nname = \"old\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n\
         expires_at = \"2020-01-01T00:00:00Z\"\n",
        sha("k-reader"),
        sha("k-admin"),
        sha("k-old")
    )
}

#[test]
fn matrix() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "keys.toml", &toml_keys());
    let auth = Auth::from_setting(&AuthSetting::Keys(path)).unwrap();
    let status = |h: Option<&str>, scope: Scope, uid: &str| -> u16 {
        match auth
            .authenticate(&headers(h))
            .and_then(|p| p.authorize(scope, uid))
        {
            Ok(()) => 200,
            Err(e) => crate::error::describe(e.kind).0.as_u16(),
        }
    };
    assert_eq!(status(None, Scope::Read, "pub/a"), 401, "no key");
    assert_eq!(status(Some("Bearer nope"), Scope::Read, "pub/a"), 401);
    assert_eq!(status(Some("Basic k-reader"), Scope::Read, "pub/a"), 401);
    assert_eq!(status(Some("Bearer "), Scope::Read, "pub/a"), 401);
    assert_eq!(
        status(Some("Bearer k-old"), Scope::Read, "x"),
        401,
        "expired"
    );
    assert_eq!(status(Some("Bearer k-reader"), Scope::Read, "pub/a"), 200);
    assert_eq!(status(Some("bearer  k-reader "), Scope::Read, "pub/a"), 200);
    assert_eq!(status(Some("Bearer k-reader"), Scope::Delete, "pub/a"), 403);
    assert_eq!(status(Some("Bearer k-reader"), Scope::Read, "priv/a"), 403);
    assert_eq!(
        status(Some("Bearer k-reader"), Scope::Read, "pub/secret/x"),
        403
    );
    assert_eq!(status(Some("Bearer k-admin"), Scope::Delete, "any"), 200);
    let p = auth.authenticate(&headers(Some("Bearer k-admin"))).unwrap();
    assert_eq!(p.name(), Some("admin"));
    assert_eq!(Auth::Off.authenticate(&headers(None)).unwrap().name(), None);
}

#[test]
fn yaml_and_reload_keep_old_keys_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "keys:\n  - name: a\n    sha256: \"{}\"\n    scopes: [read]\n",
        sha("k-a")
    );
    let path = write(dir.path(), "keys.yaml", &yaml);
    let auth = Auth::from_setting(&AuthSetting::Keys(path.clone())).unwrap();
    assert!(auth.authenticate(&headers(Some("Bearer k-a"))).is_ok());
    std::fs::write(&path, "keys: [ {name: b").unwrap();
    assert!(matches!(auth.reload(), Err(AuthError::Parse { .. })));
    assert!(
        auth.authenticate(&headers(Some("Bearer k-a"))).is_ok(),
        "old keys stay after a bad reload"
    );
    let yaml = format!(
        "keys:\n  - name: b\n    sha256: \"{}\"\n    scopes: [read]\n",
        sha("k-b")
    );
    std::fs::write(&path, yaml).unwrap();
    assert_eq!(auth.reload().unwrap(), 1);
    assert!(auth.authenticate(&headers(Some("Bearer k-a"))).is_err());
    assert!(auth.authenticate(&headers(Some("Bearer k-b"))).is_ok());
}

#[test]
fn invalid_files() {
    let dir = tempfile::tempdir().unwrap();
    let h = sha("x");
    let cases = [
        "[[keys]]\nname = \"a\"\nsha256 = \"abc\"\nscopes = [\"read\"]\n".to_string(),
        format!("[[keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = []\n"),
        format!("[[keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"write\"]\n"),
        format!(
            "[[keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"read\"]\nexpires_at = \"soon\"\n"
        ),
        format!(
            "[[keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"read\"]\nallow_prefix = [\"x\"]\n"
        ),
        format!(
            "[[keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"read\"]\nallow_prefixes = [\"\"]\n"
        ),
        format!(
            "[[keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"read\"]\n\
             [[keys]]\nname = \"b\"\nsha256 = \"{h}\"\nscopes = [\"read\"]\n"
        ),
        format!(
            "[[keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"read\"]\n\
             [[keys]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n",
            sha("y")
        ),
    ];
    for (i, text) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("k{i}.toml"), text);
        assert!(KeySet::load(&p).is_err(), "case {i}: {text}");
    }
    assert!(matches!(
        KeySet::load(&dir.path().join("missing.toml")),
        Err(AuthError::Read { .. })
    ));
}

#[test]
fn hash_key_entry_round_trips() {
    let key = new_key();
    assert_eq!(key.len(), 64);
    let entry = key_entry("ops", &["read".into(), "delete".into()], &key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "k.toml", &entry);
    let auth = Auth::from_setting(&AuthSetting::Keys(p)).unwrap();
    let principal = auth
        .authenticate(&headers(Some(&format!("Bearer {key}"))))
        .unwrap();
    principal.authorize(Scope::Delete, "x").unwrap();
    assert!(key_entry("ops", &["write".into()], &key).is_err());
}
