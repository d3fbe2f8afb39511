//! The command line for people: shell completions.

mod common;

use std::process::Command;

#[test]
fn completion_scripts_need_no_data_and_know_every_command() {
    let empty = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(common::bin())
            .args(["completions", shell])
            .current_dir(empty.path())
            .env_remove("SLUICE_DATA_DIR")
            .env_remove("SLUICE_CONFIG")
            .output()
            .expect("run sluice completions");
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).expect("utf-8");
        for command in ["serve", "mapping", "doctor", "keys", "completions"] {
            assert!(script.contains(command), "{shell} script lacks {command}");
        }
        assert!(
            std::fs::read_dir(empty.path())
                .expect("dir")
                .next()
                .is_none(),
            "{shell}: nothing written to the working directory"
        );
        if shell == "bash" {
            let path = empty.path().join("sluice.bash");
            std::fs::write(&path, &script).expect("write");
            let syntax = Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .expect("bash -n");
            assert!(syntax.status.success(), "{syntax:?}");
            std::fs::remove_file(&path).expect("remove");
        }
    }
    let bad = Command::new(common::bin())
        .args(["completions", "cmd.exe"])
        .output()
        .expect("run");
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}
