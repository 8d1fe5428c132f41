//! Connecting without an API key names the variable to set. In its own binary because it
//! changes the process environment.

use qwen_asr_realtime::{ConnectParams, Conversation, Error};

#[test]
fn a_missing_key_names_the_variable_to_set() {
    let home = std::env::temp_dir().join(format!("qwen-asr-nokey-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    std::env::remove_var("DASHSCOPE_API_KEY");
    std::env::remove_var("DASHSCOPE_API_KEY_FILE_PATH");
    std::env::set_var("HOME", &home);
    // No server is needed: the key is resolved before any connection is made.
    let err =
        Conversation::connect(ConnectParams::new().url("ws://127.0.0.1:9/api-ws/v1/realtime"))
            .unwrap_err();
    assert!(matches!(err, Error::NoApiKey), "{err:?}");
    assert!(err.to_string().contains("DASHSCOPE_API_KEY"), "{err}");
    std::fs::remove_dir_all(&home).ok();
}
