//! iii's own live tests in our suite: runs `scripts/iii-sdk-tests`, which
//! builds the tests shipped in the crates.io iii-sdk 0.25.0 crate unchanged,
//! starts this build's `qmesh serve --config tests/fixtures/iii-sdk-test.toml`
//! on iii's fixed test ports (49199, 3199) and runs them against it.
//!
//! One test, so one engine on those ports per run; the script also holds a
//! lock file, so a concurrent run elsewhere waits instead of colliding.

use std::process::Command;

#[test]
fn iii_sdk_live_tests_pass_against_the_fixture_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/scripts/iii-sdk-tests"))
        .current_dir(root)
        .env("QMESH_BIN", env!("CARGO_BIN_EXE_qmesh"))
        .output()
        .expect("run scripts/iii-sdk-tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "scripts/iii-sdk-tests failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("iii-sdk-tests: all passed"), "{stdout}");
}
