//! What `lakegate keys new` and `keys new-reader` print: a key shown once, and where
//! its hash goes.

use secrecy::ExposeSecret;

use super::document::DeviceEntry;
use super::keys::NewKey;

/// Text printed by `lakegate keys new <device-id>`: the key once, and the registry entry to add.
pub fn new_key_instructions(device_id: &str, key: &NewKey) -> String {
    let hash = key.hash.parse().expect("a new key's hash parses");
    let entry = DeviceEntry {
        keys: vec![hash],
        disabled: false,
        rate_per_sec: None,
        burst: None,
    };
    let entry = serde_json::json!({ device_id: entry });
    format!(
        "New key for device {device_id:?}. It is shown only this once; store it on the device:\n\
         \n    {}\n\n\
         Add its hash to the device's \"keys\" in the registry, e.g.:\n\
         \n    {entry}\n\n\
         To rotate, list the old and the new hash together until the device uses the new key,\n\
         then remove the old one.\n",
        key.key.expose_secret(),
    )
}

/// Text printed by `lakegate keys new-reader`: the token once, and the hash for `LAKEGATE_READER_TOKENS`.
pub fn new_reader_instructions(token: &NewKey) -> String {
    format!(
        "New reader token. It is shown only this once; give it to the dashboard's users:\n\
         \n    {}\n\n\
         Add its hash to LAKEGATE_READER_TOKENS (comma-separated), e.g.:\n\
         \n    LAKEGATE_READER_TOKENS={}\n\n\
         Readers send it as `Authorization: Bearer <token>`, or open the page at\n\
         https://<gateway>/#token=<token>.\n",
        token.key.expose_secret(),
        token.hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::generate_key;

    #[test]
    fn instructions_show_the_key_and_the_entry_to_add() {
        let new = generate_key();
        let key = new.key.expose_secret();
        let text = new_key_instructions("pump-7", &new);
        assert!(text.contains(key));
        assert!(text.contains(&format!(r#"{{"pump-7":{{"keys":["{}"]}}}}"#, new.hash)));

        let text = new_reader_instructions(&new);
        assert!(text.contains(key));
        assert!(text.contains(&format!("LAKEGATE_READER_TOKENS={}\n", new.hash)));
    }
}
