//! Hostile configuration files (issue 19), sent byte for byte to the real binary: `validate`
//! and `run` both refuse each one quickly and in little memory, with the exact messages
//! naming file:line:column, or, for a byte order mark, accept it.

use std::time::Duration;

use edgeward_testkit::{client, run_edgeward, run_edgeward_bounded, BoundedRun};

use crate::support::{start_proxy, use_built_binary};

const MINIMAL: &str = "listeners: [{address: 127.0.0.1:8080}]\nupstreams: {u: {builtin: echo}}\nroutes: [{upstream: u}]\n";

/// What refusing a hostile file may cost. Measured on a debug build of a shared 2-core
/// machine: at most 0.9 s and 82 MiB (the 10 MB file of unknown keys), the rest under 0.1 s
/// and 30 MiB. Before the limits the alias bomb passed 4 GiB in 8 s and the unknown keys took
/// 91 s: both would be killed here.
const TIME_LIMIT: Duration = Duration::from_secs(15);
const MEMORY_LIMIT: u64 = 512 << 20;

const TOP_LEVEL_KEYS: &str =
    "listeners, workers, work_stealing, access_log, access_log_properties, shutdown_timeout, client, \
                              upstreams, routes, filters, wasm, admin, geo, cache, node";

/// Runs `validate` and `run` on `bytes` (as `c.yaml`) within the limits and checks that both
/// exit 1 with exactly `problems` (the lines before the count) and `found` as the count.
fn assert_refused(bytes: &[u8], problems: &str, found: usize) -> Vec<BoundedRun> {
    use_built_binary();
    let count = format!("{found} problem{} found", if found == 1 { "" } else { "s" });
    ["validate", "run"]
        .into_iter()
        .map(|command| {
            let run = run_edgeward_bounded(
                &[command, "--config", "c.yaml"],
                &[("c.yaml", bytes)],
                TIME_LIMIT,
                MEMORY_LIMIT,
            );
            let stderr = String::from_utf8_lossy(&run.output.stderr);
            let expected = match command {
                "run" => format!("{problems}\n{count}\nedgeward: not starting\n"),
                _ => format!("{problems}\n{count}\n"),
            };
            assert!(
                stderr == expected,
                "edgeward {command}:\n--- expected\n{expected}--- got\n{stderr}"
            );
            assert_eq!(run.output.status.code(), Some(1), "edgeward {command}");
            assert!(run.output.stdout.is_empty(), "edgeward {command}");
            eprintln!(
                "edgeward {command}: refused in {:?}, peak memory {} MiB",
                run.elapsed,
                run.peak_memory >> 20
            );
            run
        })
        .collect()
}

/// `indent`ed lines `a0` to `a8`, each a list repeating the one before nine times: expanded,
/// 9^9 (387 million) strings from half a kilobyte.
fn alias_bomb(indent: &str) -> String {
    let mut text = format!("{indent}a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        text.push_str(&format!("{indent}a{i}: &a{i} [{refs}]\n"));
    }
    text
}

const ALIAS_LIMIT: &str = "alias `*a4` would make the aliases of this file repeat more than \
                           100000 values; aliases may repeat at most 100000 values and 4 MiB of \
                           text in all (a guard against \"billion laughs\" files)";

#[test]
fn an_alias_bomb_is_refused_at_the_alias_crossing_the_bound() {
    let text = format!("{MINIMAL}defaults:\n{}", alias_bomb("  "));
    assert!(text.len() < 1024);
    // Lines 5.. hold a0..a8; a1 to a4 copy 74718 values, a5's first `*a4` 66430 more.
    assert_refused(
        text.as_bytes(),
        &format!("c.yaml:10:12: error: {ALIAS_LIMIT}"),
        1,
    );
}

#[test]
fn an_alias_bomb_in_a_filter_config_is_refused_too() {
    let text = format!(
        "{MINIMAL}filters:\n  f:\n    module: f.wasm\n    config:\n{}",
        alias_bomb("      ")
    );
    assert_refused(
        text.as_bytes(),
        &format!("c.yaml:13:16: error: {ALIAS_LIMIT}"),
        1,
    );
}

#[test]
fn anchors_nested_around_a_large_list_cost_no_copies() {
    // 100 anchors around a list of 200,000 values (400 KB): before, each anchor held a copy
    // of its value, 20 million values in all (past 2 GiB in 11 s with a million). No alias is
    // needed for that. Now about 110 MiB, nearly all the parser reading the flow list.
    let text = format!(
        "{MINIMAL}x: {}{}0{}\n",
        (0..100).map(|i| format!("&a{i} [")).collect::<String>(),
        "0,".repeat(200_000),
        "]".repeat(100)
    );
    assert_refused(
        text.as_bytes(),
        &format!("c.yaml:4:1: error: unknown key `x`; expected one of: {TOP_LEVEL_KEYS}"),
        1,
    );
}

#[test]
fn aliases_for_shared_settings_still_work() {
    use_built_binary();
    let text = "listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  a: {endpoints: &eps ['127.0.0.1:9001'], health_check: &hc {path: /healthz, interval: 2s}}\n  b: {endpoints: *eps, health_check: *hc}\nroutes: [{upstream: a}, {upstream: b}]\n";
    let out = run_edgeward(&["validate", "--config", "c.yaml"], &[("c.yaml", text)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn a_10_mb_file_of_110k_unknown_keys_is_checked_in_linear_time_and_the_first_100_shown() {
    let key = |i: usize| format!("unknown_key_{i:07}_{}", "x".repeat(70));
    let mut text = String::from(MINIMAL);
    for i in 0..110_000 {
        text.push_str(&key(i));
        text.push_str(": v\n");
    }
    assert!(text.len() > 10_000_000, "{}", text.len());
    let mut problems: Vec<String> = (0..100)
        .map(|i| {
            format!(
                "c.yaml:{}:1: error: unknown key `{}`; expected one of: {TOP_LEVEL_KEYS}",
                i + 4,
                key(i)
            )
        })
        .collect();
    problems.push(
        "c.yaml: note: 109900 more problems not shown (only the first 100 are listed)".into(),
    );
    assert_refused(text.as_bytes(), &problems.join("\n"), 110_000);
}

#[test]
fn a_file_over_16_mib_is_refused_before_parsing() {
    const MAX: usize = 16 << 20;
    // Comment lines pad a valid file to exactly the limit: accepted.
    let mut text = String::from(MINIMAL);
    while text.len() + 100 <= MAX {
        text.push_str(&format!("#{}\n", "x".repeat(98)));
    }
    text.push_str(&format!("#{}\n", "x".repeat(MAX - text.len() - 2)));
    assert_eq!(text.len(), MAX);
    use_built_binary();
    let out = run_edgeward(&["validate", "--config", "c.yaml"], &[("c.yaml", &text)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One byte more is refused, whatever it is (here a NUL, never looked at).
    text.push('\0');
    assert_refused(
        text.as_bytes(),
        "c.yaml: error: the configuration is larger than 16 MiB, the most edgeward reads",
        1,
    );
}

#[test]
fn a_nul_byte_is_refused_where_it_is_not_taken_for_the_end() {
    // Before: read as `upstream: o`, and the routes after the NUL were lost.
    let bytes = b"listeners: [{address: 127.0.0.1:8080}]\nupstreams: {o: {builtin: echo}}\nroutes: [{upstream: o\0x}]\n";
    assert_refused(
        bytes,
        "c.yaml:3:22: error: a NUL byte is not allowed in a configuration (YAML forbids \
         control characters)",
        1,
    );
    let mut bytes = MINIMAL.as_bytes().to_vec();
    bytes.extend_from_slice(b"# the rest is lost\0\n- {upstream: u}\n");
    assert_refused(
        &bytes,
        "c.yaml:4:19: error: a NUL byte is not allowed in a configuration (YAML forbids \
         control characters)",
        1,
    );
}

#[test]
fn other_control_characters_are_refused_each_with_its_place() {
    let text = format!("{MINIMAL}access_log: \"a\u{1}b\u{7f}\"\nworkers: \u{85}\u{9b}2\r\n");
    assert_refused(
        text.as_bytes(),
        "c.yaml:4:15: error: control character U+0001 is not allowed in a configuration (YAML \
         forbids control characters)\n\
         c.yaml:4:17: error: control character U+007F is not allowed in a configuration (YAML \
         forbids control characters)\n\
         c.yaml:5:11: error: control character U+009B is not allowed in a configuration (YAML \
         forbids control characters)",
        3,
    );
}

#[test]
fn text_that_is_not_utf8_is_refused_with_its_place() {
    let mut bytes = MINIMAL.as_bytes().to_vec();
    bytes.extend_from_slice(b"access_log: caf\xe9.log\n");
    assert_refused(
        &bytes,
        "c.yaml:4:16: error: byte 0xE9 is not UTF-8; a configuration must be UTF-8 text",
        1,
    );
}

#[test]
fn deep_nesting_is_refused_instead_of_overflowing_the_stack() {
    // Before: `thread 'main' has overflowed its stack`, killed by SIGABRT.
    let text = format!("{MINIMAL}deep:\n{}x\n", "- ".repeat(100_000));
    assert_refused(
        text.as_bytes(),
        "c.yaml:5:255: error: lists and mappings nest more than 128 levels deep here",
        1,
    );
}

#[test]
fn a_second_document_is_refused_not_ignored() {
    // Before: `ok`, with everything after `---` ignored.
    let text = format!("{MINIMAL}---\nroutes: []\n");
    assert_refused(
        text.as_bytes(),
        "c.yaml:4:1: error: a second YAML document starts here; a configuration file holds one",
        1,
    );
}

#[test]
fn a_byte_order_mark_is_skipped_and_columns_count_from_after_it() {
    let with_bom = |text: &str| format!("\u{feff}{text}");
    use_built_binary();
    let out = run_edgeward(
        &["validate", "--config", "c.yaml"],
        &[("c.yaml", &with_bom(MINIMAL))],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    assert_refused(
        with_bom(&format!("workers: 0\n{MINIMAL}")).as_bytes(),
        "c.yaml:1:10: error: `workers` must be from 1 to 1024",
        1,
    );
}

#[tokio::test]
async fn a_configuration_with_a_byte_order_mark_is_served() {
    let proxy = start_proxy(
        "\u{feff}listeners: [{address: \"{{listen}}\"}]\nupstreams: {u: {builtin: echo}}\nroutes: [{upstream: u}]\n",
    )
    .await;
    let response = client::http1()
        .get(proxy.url("/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
