//! The rule table: the shipped default, parsing from TOML and JSON, validation errors that
//! name the key, and round trips.

use proptest::prelude::*;
use topoccl_compress::policy::{
    IfUnknown, PhaseRatio, Policy, PolicyError, Table, TableError, WarmupPhase,
};

const DEFAULT_TOML: &str = include_str!("../policies/default.toml");

fn invalid_key(e: &TableError) -> (&str, Option<usize>) {
    match e {
        TableError::Invalid { key, line, .. } => (key.as_str(), *line),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn shipped_default_is_exactly_the_seed() {
    let parsed = Table::from_toml(DEFAULT_TOML).expect("default.toml parses");
    assert_eq!(parsed, Table::seed());
    assert_eq!(Policy::default().table(), &Table::seed());
    assert_eq!(Table::default(), Table::seed());
}

#[test]
fn seed_has_the_seed_numbers() {
    let t = Table::seed();
    assert_eq!(t.congestion.threshold, 0.70);
    assert_eq!(t.congestion.ratio, 0.02);
    assert_eq!(t.warmup.initial_ratio, PhaseRatio::Ratio(0.05));
    assert_eq!(
        t.warmup.phases,
        vec![
            WarmupPhase {
                below_loss: 0.1,
                ratio: PhaseRatio::Ratio(0.02)
            },
            WarmupPhase {
                below_loss: 0.01,
                ratio: PhaseRatio::Off
            },
        ]
    );
    assert_eq!(t.breaker.bad_steps, 3);
    assert_eq!(t.breaker.max_accuracy_drop, 0.01);
    assert!(t.validate().is_ok());
}

#[test]
fn empty_text_is_the_seed_and_partial_tables_override_one_key() {
    assert_eq!(Table::from_toml("").unwrap(), Table::seed());
    assert_eq!(Table::from_json("{}").unwrap(), Table::seed());
    let t = Table::from_toml("[congestion]\nthreshold = 0.8\n").unwrap();
    assert_eq!(t.congestion.threshold, 0.8);
    assert_eq!(t.congestion.ratio, 0.02);
    assert_eq!(t.breaker, Table::seed().breaker);
    let j = Table::from_json(r#"{"breaker": {"bad_steps": 5}}"#).unwrap();
    assert_eq!(j.breaker.bad_steps, 5);
    assert_eq!(j.breaker.cooldown_steps, 100);
}

#[test]
fn ratio_out_of_range_names_the_key_line_and_range() {
    let text = "[congestion]\nthreshold = 0.7\nratio = 1.5\n";
    let e = Table::from_toml(text).unwrap_err();
    assert_eq!(invalid_key(&e), ("congestion.ratio", Some(3)));
    let msg = e.to_string();
    assert!(msg.contains("congestion.ratio"), "{msg}");
    assert!(msg.contains("1.5"), "{msg}");
    assert!(msg.contains("(0, 1]"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");

    for bad in ["0", "-0.1", "0.0"] {
        let e = Table::from_toml(&format!("[congestion]\nratio = {bad}\n")).unwrap_err();
        assert_eq!(invalid_key(&e).0, "congestion.ratio");
    }
    let e = Table::from_json(r#"{"congestion": {"ratio": 1.5}}"#).unwrap_err();
    assert_eq!(invalid_key(&e), ("congestion.ratio", None));
    assert!(e.to_string().contains("(0, 1]"));
}

#[test]
fn phase_ratio_errors_name_the_phase() {
    let text = "[warmup]\n[[warmup.phases]]\nbelow_loss = 0.5\nratio = 0.1\n\
                [[warmup.phases]]\nbelow_loss = 0.2\nratio = 2.0\n";
    let e = Table::from_toml(text).unwrap_err();
    assert_eq!(invalid_key(&e), ("warmup.phases[1].ratio", Some(7)));

    let e = Table::from_toml("[warmup]\ninitial_ratio = 7\n").unwrap_err();
    assert_eq!(invalid_key(&e), ("warmup.initial_ratio", Some(2)));

    // A string other than "off" is a type error that says what is accepted.
    let e = Table::from_toml("[warmup]\ninitial_ratio = \"of\"\n").unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, TableError::Syntax { line: Some(2), .. }),
        "{e:?}"
    );
    assert!(msg.contains("\"off\""), "{msg}");
    assert!(msg.contains("initial_ratio"), "{msg}");
}

#[test]
fn thresholds_must_be_ordered() {
    let text = "[[warmup.phases]]\nbelow_loss = 0.1\nratio = 0.02\n\
                [[warmup.phases]]\nbelow_loss = 0.1\nratio = \"off\"\n";
    let e = Table::from_toml(text).unwrap_err();
    assert_eq!(invalid_key(&e), ("warmup.phases[1].below_loss", Some(5)));
    assert!(e.to_string().contains("decreasing"), "{e}");

    let e = Table::from_toml("[congestion]\nthreshold = 0.1\nhysteresis = 0.2\n").unwrap_err();
    assert_eq!(invalid_key(&e), ("congestion.hysteresis", Some(3)));

    let e =
        Table::from_toml("[breaker]\ncooldown_steps = 100\nmax_cooldown_steps = 50\n").unwrap_err();
    assert_eq!(invalid_key(&e), ("breaker.max_cooldown_steps", Some(3)));
    assert!(e.to_string().contains("cooldown_steps (100)"), "{e}");
}

#[test]
fn other_ranges_are_checked() {
    let cases = [
        ("[congestion]\nthreshold = 1.0\n", "congestion.threshold"),
        ("[congestion]\nthreshold = -0.1\n", "congestion.threshold"),
        ("[cost_gate]\nmargin = 1.0\n", "cost_gate.margin"),
        ("[cost_gate]\nmargin = -0.5\n", "cost_gate.margin"),
        ("[breaker]\nbad_steps = 0\n", "breaker.bad_steps"),
        (
            "[breaker]\nmax_accuracy_drop = 0\n",
            "breaker.max_accuracy_drop",
        ),
        ("[breaker]\nmax_loss_rise = -1\n", "breaker.max_loss_rise"),
        ("[breaker]\ncooldown_steps = 0\n", "breaker.cooldown_steps"),
        (
            "[breaker]\nprobation_steps = 0\n",
            "breaker.probation_steps",
        ),
        (
            "[breaker]\nprobation_ratio = 1.01\n",
            "breaker.probation_ratio",
        ),
        (
            "[warmup]\nloss_hysteresis = -0.1\n",
            "warmup.loss_hysteresis",
        ),
        (
            "[warmup]\nloss_hysteresis = nan\n",
            "warmup.loss_hysteresis",
        ),
    ];
    for (text, key) in cases {
        let e = Table::from_toml(text).unwrap_err();
        assert_eq!(invalid_key(&e), (key, Some(2)), "{text}");
    }
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let e = Table::from_toml("[congestion]\nthreshold = 0.7\nratoi = 0.5\n").unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, TableError::Syntax { line: Some(3), .. }),
        "{e:?}"
    );
    assert!(msg.contains("ratoi"), "{msg}");
    assert!(msg.contains("ratio"), "the valid keys are listed: {msg}");

    let e = Table::from_toml("[congestoin]\nthreshold = 0.7\n").unwrap_err();
    assert!(e.to_string().contains("congestoin"), "{e}");

    let e = Table::from_toml("[[warmup.phases]]\nbelow_loss = 0.1\nratio = 0.02\nwhen = 1\n")
        .unwrap_err();
    assert!(e.to_string().contains("when"), "{e}");

    let e = Table::from_json("{\"breaker\": {\n \"bad_stepz\": 3}}").unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, TableError::Syntax { line: Some(2), .. }),
        "{e:?}"
    );
    assert!(msg.contains("bad_stepz"), "{msg}");
}

#[test]
fn type_and_syntax_errors_say_where() {
    let e = Table::from_toml("[congestion]\nthreshold = \"high\"\n").unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, TableError::Syntax { line: Some(2), .. }),
        "{e:?}"
    );
    assert!(msg.contains("threshold"), "{msg}");

    let e = Table::from_toml("[congestion\n").unwrap_err();
    assert!(
        matches!(e, TableError::Syntax { line: Some(1), .. }),
        "{e:?}"
    );

    let e = Table::from_json("{\"congestion\": {\"if_unknown\": \"maybe\"}}").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("maybe") && msg.contains("off"), "{msg}");
}

#[test]
fn policy_new_rejects_an_invalid_table() {
    let mut t = Table::seed();
    t.congestion.ratio = 1.5;
    match Policy::new(t.clone()) {
        Err(PolicyError::Table(TableError::Invalid { key, .. })) => {
            assert_eq!(key, "congestion.ratio")
        }
        other => panic!("expected a table error, got {other:?}"),
    }
    assert!(matches!(
        Policy::with_log_capacity(Table::seed(), 0),
        Err(PolicyError::LogCapacity { capacity: 0 })
    ));
}

/// Values on a 1/1000 grid: what people write in a table, and what serde_json (without
/// its `float_roundtrip` feature) reads back exactly.
fn grid(lo: u32, hi: u32) -> impl Strategy<Value = f64> {
    (lo..=hi).prop_map(|k| f64::from(k) / 1000.0)
}

fn ratio() -> impl Strategy<Value = f64> {
    grid(1, 1000)
}

fn phase_ratio() -> impl Strategy<Value = PhaseRatio> {
    prop_oneof![ratio().prop_map(PhaseRatio::Ratio), Just(PhaseRatio::Off)]
}

prop_compose! {
    fn valid_table()(
        threshold in grid(50, 990),
        band in 0u32..=1000,
        cratio in ratio(),
        unknown_on in any::<bool>(),
        enabled in any::<bool>(),
        initial in phase_ratio(),
        losses in prop::collection::btree_set(1u32..5000, 0..4),
        ratios in prop::collection::vec(phase_ratio(), 4),
        loss_h in grid(0, 500),
        margin in grid(0, 900),
        bad in 1u32..10,
        drop in grid(1, 500),
        rise in grid(1, 500),
        growth in 0u32..10,
        cooldown in 1u64..500,
        extra in 0u64..5000,
        probation in 1u64..100,
        pratio in ratio(),
        dwell in 0u64..50,
    ) -> Table {
        let mut t = Table::seed();
        t.congestion.threshold = threshold;
        // A band in [0, threshold] on the same grid.
        t.congestion.hysteresis = (threshold * f64::from(band)).round() / 1000.0;
        t.congestion.ratio = cratio;
        t.congestion.if_unknown = if unknown_on { IfUnknown::On } else { IfUnknown::Off };
        t.warmup.enabled = enabled;
        t.warmup.initial_ratio = initial;
        // Distinct losses, by decreasing value.
        t.warmup.phases = losses
            .into_iter()
            .rev()
            .zip(ratios)
            .map(|(k, r)| WarmupPhase { below_loss: f64::from(k) / 1000.0, ratio: r })
            .collect();
        t.warmup.loss_hysteresis = loss_h;
        t.cost_gate.margin = margin;
        t.breaker.bad_steps = bad;
        t.breaker.max_accuracy_drop = drop;
        t.breaker.max_loss_rise = rise;
        t.breaker.residual_growth_steps = growth;
        t.breaker.cooldown_steps = cooldown;
        t.breaker.max_cooldown_steps = cooldown + extra;
        t.breaker.probation_steps = probation;
        t.breaker.probation_ratio = pratio;
        t.dwell.min_steps = dwell;
        t
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any valid table survives TOML and JSON round trips unchanged.
    #[test]
    fn valid_tables_round_trip(t in valid_table()) {
        prop_assert!(t.validate().is_ok());
        let toml_text = t.to_toml().unwrap();
        prop_assert_eq!(&Table::from_toml(&toml_text).unwrap(), &t);
        let json_text = serde_json::to_string(&t).unwrap();
        prop_assert_eq!(&Table::from_json(&json_text).unwrap(), &t);
    }

    /// Any ratio outside (0, 1] in the congestion rule is rejected, naming the key.
    #[test]
    fn out_of_range_ratios_are_rejected(r in prop_oneof![-10.0f64..=0.0, 1.0000001f64..10.0]) {
        let e = Table::from_toml(&format!("[congestion]\nratio = {r:?}\n")).unwrap_err();
        prop_assert_eq!(invalid_key(&e), ("congestion.ratio", Some(2)));
    }
}
