//! etcd v3's JSON gateway as requests and replies: the bodies the etcd store sends to
//! `/v3/kv/*` and `/v3/lease/*`, and what it reads back. No sockets.
//!
//! The gateway speaks protobuf's JSON mapping: keys and values are base64 (standard
//! alphabet, padded), 64-bit integers are decimal strings (numbers are accepted too),
//! fields at their default value (0, false, empty) are left out, and a refusal is
//! `{"error": ..., "message": ..., "code": N}` with a gRPC status code.
//!
//! A prefix's range end ([`prefix_end`]) is the prefix with its last byte below `0xff`
//! increased by one and the bytes after it dropped: every key that starts with the prefix
//! sorts below it, and no other key does.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

/// Operations in one transaction: etcd's default `--max-txn-ops`.
pub(super) const MAX_TXN_OPS: usize = 128;

/// A key's value and the revision that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Kv {
    pub(super) value: Vec<u8>,
    pub(super) mod_revision: i64,
}

/// What a compare-and-put of a counter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Swap {
    /// The counter had not changed: the new value is stored.
    Done,
    /// Someone changed it first; its value now (`None`: it was deleted).
    Lost(Option<Kv>),
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn body(v: &Value) -> Vec<u8> {
    // Serialising a `Value` of strings, numbers and booleans cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// The end of the range of keys starting with `prefix` (`[0]`: every key, etcd's
/// convention for an empty prefix).
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            let i = end.len() - 1;
            end[i] = last + 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// `/v3/kv/put`: `key` = `value`, attached to `lease` when given.
pub(super) fn put(key: &str, value: &[u8], lease: Option<i64>) -> Vec<u8> {
    let mut v = json!({"key": b64(key.as_bytes()), "value": b64(value)});
    if let Some(id) = lease {
        v["lease"] = json!(id.to_string());
    }
    body(&v)
}

/// `/v3/kv/range`: the one key `key`.
pub(super) fn range(key: &str) -> Vec<u8> {
    body(&json!({"key": b64(key.as_bytes())}))
}

/// `/v3/kv/deleterange`: `key`, or with `prefix` every key that starts with it.
pub(super) fn delete(key: &str, prefix: bool) -> Vec<u8> {
    let mut v = json!({"key": b64(key.as_bytes())});
    if prefix {
        v["range_end"] = json!(b64(&prefix_end(key.as_bytes())));
    }
    body(&v)
}

/// `/v3/kv/range`: how many keys start with `prefix`.
pub(super) fn count(prefix: &str) -> Vec<u8> {
    body(&json!({"key": b64(prefix.as_bytes()),
                 "range_end": b64(&prefix_end(prefix.as_bytes())),
                 "count_only": true}))
}

/// `/v3/kv/txn`: which of `keys` (at most [`MAX_TXN_OPS`]) exist, without their values.
pub(super) fn exist(keys: &[&str]) -> Vec<u8> {
    let ops: Vec<Value> = keys
        .iter()
        .map(|k| json!({"request_range": {"key": b64(k.as_bytes()), "keys_only": true}}))
        .collect();
    body(&json!({ "success": ops }))
}

/// `/v3/kv/txn`: `key` = `value` if its mod revision is still `mod_revision` (0: it does
/// not exist); otherwise read it.
pub(super) fn swap(key: &str, mod_revision: i64, value: &[u8]) -> Vec<u8> {
    let k = b64(key.as_bytes());
    body(&json!({
        "compare": [{"key": k, "target": "MOD", "result": "EQUAL",
                     "mod_revision": mod_revision.to_string()}],
        "success": [{"request_put": {"key": k, "value": b64(value)}}],
        "failure": [{"request_range": {"key": k}}],
    }))
}

/// `/v3/lease/grant` for `ttl_s` seconds.
pub(super) fn lease_grant(ttl_s: u64) -> Vec<u8> {
    body(&json!({"TTL": ttl_s.to_string()}))
}

/// `/v3/lease/keepalive` or `/v3/lease/revoke` of lease `id`.
pub(super) fn lease(id: i64) -> Vec<u8> {
    body(&json!({"ID": id.to_string()}))
}

/// Parses a reply; a refusal becomes its message (with the gRPC code).
pub(super) fn reply(bytes: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "unreadable reply ({e}): '{}'",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )
    })?;
    if let Some(err) = v.get("error") {
        let msg = v
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| err.as_str())
            .unwrap_or("no message");
        let code = v.get("code").and_then(Value::as_i64).unwrap_or(-1);
        return Err(format!("{msg} (gRPC code {code})"));
    }
    if !v.is_object() {
        return Err(format!("reply is not a JSON object: {v}"));
    }
    Ok(v)
}

/// A 64-bit integer field: a decimal string or a number; absent reads as 0.
fn int(v: &Value, field: &str) -> Result<i64, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("field '{field}' = '{s}' is not an integer")),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("field '{field}' = {n} is not an integer")),
        Some(other) => Err(format!("field '{field}' = {other} is not an integer")),
    }
}

fn bytes(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => STANDARD
            .decode(s)
            .map_err(|e| format!("field '{field}' is not base64: {e}")),
        Some(other) => Err(format!("field '{field}' = {other} is not a string")),
    }
}

/// The key-values of a range reply.
fn kvs(v: &Value) -> Result<Vec<Kv>, String> {
    match v.get("kvs") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|kv| {
                Ok(Kv {
                    value: bytes(kv, "value")?,
                    mod_revision: int(kv, "mod_revision")?,
                })
            })
            .collect(),
        Some(other) => Err(format!("'kvs' is not a list: {other}")),
    }
}

/// The one key a range reply holds, if it exists.
pub(super) fn range_reply(v: &Value) -> Result<Option<Kv>, String> {
    Ok(kvs(v)?.into_iter().next())
}

fn responses(v: &Value) -> Result<&[Value], String> {
    match v.get("responses") {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(format!("'responses' is not a list: {other}")),
    }
}

/// Which of the `n` keys of an [`exist`] transaction exist.
pub(super) fn exist_reply(v: &Value, n: usize) -> Result<Vec<bool>, String> {
    let rs = responses(v)?;
    if rs.len() != n {
        return Err(format!(
            "asked about {n} keys, the reply answers {}",
            rs.len()
        ));
    }
    rs.iter()
        .map(|r| {
            let range = r
                .get("response_range")
                .ok_or_else(|| format!("a reply that is not a range: {r}"))?;
            Ok(!kvs(range)?.is_empty())
        })
        .collect()
}

/// What a [`swap`] transaction did.
pub(super) fn swap_reply(v: &Value) -> Result<Swap, String> {
    if v.get("succeeded").and_then(Value::as_bool).unwrap_or(false) {
        return Ok(Swap::Done);
    }
    let rs = responses(v)?;
    let range = rs
        .first()
        .and_then(|r| r.get("response_range"))
        .ok_or_else(|| format!("a failed compare without the key's value: {v}"))?;
    Ok(Swap::Lost(range_reply(range)?))
}

/// How many keys a delete removed (`field` "deleted") or a range counted ("count").
pub(super) fn number_reply(v: &Value, field: &str) -> Result<u64, String> {
    let n = int(v, field)?;
    u64::try_from(n).map_err(|_| format!("'{field}' is {n}, below zero"))
}

/// A granted lease: its id and TTL in seconds.
pub(super) fn grant_reply(v: &Value) -> Result<(i64, i64), String> {
    let id = int(v, "ID")?;
    if id == 0 {
        return Err(format!("a lease grant without a lease id: {v}"));
    }
    Ok((id, int(v, "TTL")?))
}

/// The TTL a keepalive renewed the lease to, in seconds; 0: the lease no longer exists.
/// The gateway streams keepalive replies, one JSON object per line, each `{"result":
/// ...}`; the last one counts.
pub(super) fn keepalive_reply(bytes: &[u8]) -> Result<i64, String> {
    let mut ttl = None;
    for line in bytes.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v = reply(line)?;
        let result = v
            .get("result")
            .ok_or_else(|| format!("a keepalive reply without a result: {v}"))?;
        ttl = Some(int(result, "TTL")?);
    }
    ttl.ok_or_else(|| "an empty keepalive reply".to_string())
}

/// Every decoder of what an etcd server (or whatever answers at its address) sends: the
/// HTTP response, then the JSON reply and each kind of reply in it. Never panics. The fuzz
/// target and the property test below share it.
pub(crate) fn take_any_bytes(bytes: &[u8]) {
    let _ = super::http::read_response(&mut &bytes[..], 1 << 16);
    if let Ok(v) = reply(bytes) {
        let _ = (
            range_reply(&v),
            swap_reply(&v),
            exist_reply(&v, 1),
            exist_reply(&v, 3),
            grant_reply(&v),
            number_reply(&v, "count"),
        );
    }
    let _ = keepalive_reply(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Replies as etcd 3.4's gateway sends them.
    const HEADER: &str = r#""header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"3","raft_term":"2"}"#;

    fn v(s: &str) -> Value {
        reply(s.as_bytes()).unwrap()
    }

    #[test]
    fn request_bodies() {
        let p: Value = serde_json::from_slice(&put("foo", b"bar", Some(7))).unwrap();
        assert_eq!(p, json!({"key": "Zm9v", "value": "YmFy", "lease": "7"}));
        let p: Value = serde_json::from_slice(&put("", b"", None)).unwrap();
        assert_eq!(p, json!({"key": "", "value": ""}));
        let d: Value = serde_json::from_slice(&delete("ab", true)).unwrap();
        assert_eq!(d, json!({"key": "YWI=", "range_end": "YWM="}));
        let d: Value = serde_json::from_slice(&delete("ab", false)).unwrap();
        assert_eq!(d, json!({"key": "YWI="}));
        let s: Value = serde_json::from_slice(&swap("cnt", 0, b"1")).unwrap();
        assert_eq!(
            s,
            json!({"compare": [{"key": "Y250", "target": "MOD", "result": "EQUAL", "mod_revision": "0"}],
                   "success": [{"request_put": {"key": "Y250", "value": "MQ=="}}],
                   "failure": [{"request_range": {"key": "Y250"}}]})
        );
        let c: Value = serde_json::from_slice(&count("ab")).unwrap();
        assert_eq!(
            c,
            json!({"key": "YWI=", "range_end": "YWM=", "count_only": true})
        );
        let e: Value = serde_json::from_slice(&exist(&["a", "b"])).unwrap();
        assert_eq!(
            e["success"][1],
            json!({"request_range": {"key": "Yg==", "keys_only": true}})
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&lease_grant(10)).unwrap(),
            json!({"TTL": "10"})
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&lease(-5)).unwrap(),
            json!({"ID": "-5"})
        );
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn replies_as_etcd_sends_them() {
        let r = v(&format!(
            r#"{{{HEADER},"kvs":[{{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}],"count":"1"}}"#
        ));
        assert_eq!(
            range_reply(&r).unwrap(),
            Some(Kv {
                value: b"bar".to_vec(),
                mod_revision: 2
            })
        );
        assert_eq!(range_reply(&v(&format!("{{{HEADER}}}"))).unwrap(), None);
        // An empty value is left out.
        let r = v(r#"{"kvs":[{"key":"Zm9v","mod_revision":9}]}"#);
        assert_eq!(
            range_reply(&r).unwrap(),
            Some(Kv {
                value: vec![],
                mod_revision: 9
            })
        );

        let ok = v(&format!(
            r#"{{{HEADER},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"3"}}}}}}]}}"#
        ));
        assert_eq!(swap_reply(&ok).unwrap(), Swap::Done);
        let lost = v(&format!(
            r#"{{{HEADER},"responses":[{{"response_range":{{"header":{{"revision":"3"}},"kvs":[{{"key":"Y250","create_revision":"3","mod_revision":"3","version":"1","value":"MQ=="}}],"count":"1"}}}}]}}"#
        ));
        assert_eq!(
            swap_reply(&lost).unwrap(),
            Swap::Lost(Some(Kv {
                value: b"1".to_vec(),
                mod_revision: 3
            }))
        );
        let gone = v(r#"{"responses":[{"response_range":{"header":{}}}]}"#);
        assert_eq!(swap_reply(&gone).unwrap(), Swap::Lost(None));

        let ex = v(&format!(
            r#"{{{HEADER},"succeeded":true,"responses":[{{"response_range":{{"header":{{"revision":"3"}},"kvs":[{{"key":"Y250","create_revision":"3","mod_revision":"3","version":"1"}}],"count":"1"}}}},{{"response_range":{{"header":{{"revision":"3"}}}}}}]}}"#
        ));
        assert_eq!(exist_reply(&ex, 2).unwrap(), vec![true, false]);
        assert!(exist_reply(&ex, 3).unwrap_err().contains("3 keys"));

        assert_eq!(
            number_reply(&v(r#"{"deleted":"3"}"#), "deleted").unwrap(),
            3
        );
        assert_eq!(
            number_reply(&v(&format!("{{{HEADER}}}")), "count").unwrap(),
            0
        );
        assert!(number_reply(&v(r#"{"count":"-1"}"#), "count").is_err());
        let g = v(&format!(
            r#"{{{HEADER},"ID":"2324035840651299592","TTL":"5"}}"#
        ));
        assert_eq!(grant_reply(&g).unwrap(), (2324035840651299592, 5));
        assert!(grant_reply(&v("{}")).is_err());

        let alive =
            format!("{{\"result\":{{{HEADER},\"ID\":\"2324035840651299592\",\"TTL\":\"5\"}}}}\n");
        assert_eq!(keepalive_reply(alive.as_bytes()).unwrap(), 5);
        let expired = format!("{{\"result\":{{{HEADER},\"ID\":\"1234\"}}}}\n");
        assert_eq!(keepalive_reply(expired.as_bytes()).unwrap(), 0);
        assert!(keepalive_reply(b"\n").is_err());
    }

    #[test]
    fn refusals_and_garbage_are_errors() {
        let e = reply(br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#)
            .unwrap_err();
        assert_eq!(e, "etcdserver: requested lease not found (gRPC code 5)");
        assert!(reply(b"<html>").unwrap_err().contains("unreadable reply"));
        assert!(reply(b"[1]").unwrap_err().contains("not a JSON object"));
        assert!(range_reply(&v(r#"{"kvs":[{"value":"***"}]}"#))
            .unwrap_err()
            .contains("base64"));
        assert!(range_reply(&v(r#"{"kvs":[{"mod_revision":"x"}]}"#))
            .unwrap_err()
            .contains("mod_revision"));
        assert!(swap_reply(&v("{}")).unwrap_err().contains("failed compare"));
        assert!(keepalive_reply(br#"{"error":"x","code":14}"#)
            .unwrap_err()
            .contains("14"));
    }

    proptest! {
        /// Whatever the key and value, the put body carries them as the gateway
        /// decodes them, and a range reply carrying them decodes to the same bytes.
        #[test]
        fn bytes_round_trip(key in ".{0,40}", value in proptest::collection::vec(any::<u8>(), 0..200),
                            rev in any::<i64>()) {
            let p: Value = serde_json::from_slice(&put(&key, &value, None)).unwrap();
            prop_assert_eq!(STANDARD.decode(p["key"].as_str().unwrap()).unwrap(), key.as_bytes());
            prop_assert_eq!(STANDARD.decode(p["value"].as_str().unwrap()).unwrap(), value.clone());
            let r = json!({"kvs": [{"key": p["key"], "value": p["value"], "mod_revision": rev.to_string()}]});
            prop_assert_eq!(range_reply(&r).unwrap(), Some(Kv { value, mod_revision: rev }));
        }

        /// The range from a prefix to its range end holds exactly the keys that start
        /// with the prefix.
        #[test]
        fn prefix_range_holds_exactly_the_prefixed(prefix in proptest::collection::vec(any::<u8>(), 0..6),
                                                    key in proptest::collection::vec(any::<u8>(), 0..8)) {
            let end = prefix_end(&prefix);
            let in_range = key >= prefix && (end == [0] || key < end);
            prop_assert_eq!(in_range, key.starts_with(&prefix));
        }

        /// Arbitrary reply bytes never panic the decoders.
        #[test]
        fn arbitrary_replies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            take_any_bytes(&bytes);
        }
    }
}
