//! Fixtures, reviews and their JSON Patches.

use super::*;

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture_path(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// A fixture's bytes and its parsed JSON.
pub fn fixture(name: &str) -> (Vec<u8>, Value) {
    let path = fixture_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    (bytes, json)
}

/// `review` with `request.uid` and `request.object` replaced.
pub fn review_of(review: &Value, uid: &str, object: Value) -> Vec<u8> {
    let mut review = review.clone();
    review["request"]["uid"] = Value::String(uid.to_owned());
    review["request"]["object"] = object;
    serde_json::to_vec(&review).expect("encoding a review")
}

/// The response's JSON Patch, decoded from base64, or `None` when there is no patch field.
pub fn decode_patch(response: &Value) -> Option<json_patch::Patch> {
    let encoded = response.get("patch")?;
    let encoded = encoded.as_str().expect("response.patch is a string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("response.patch is not base64 ({e}): {encoded}"));
    Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "response.patch is not a JSON Patch ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    }))
}

/// `object` with `patch` applied.
pub fn apply_patch(object: &Value, patch: &json_patch::Patch) -> Value {
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch.0)
        .unwrap_or_else(|e| panic!("the patch does not apply ({e}): {patch:?}"));
    patched
}

// -------------------------------------------------------------------------------------------
// The command-line subcommands (`check`, `review`), run to completion under assert_cmd.

/// The crate's root: the working directory of [`cli`], so reports name `tests/check/...`.
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
