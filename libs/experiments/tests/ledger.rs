//! Attribution rules and the report on a known split.

use tandem_experiments::{ExperimentLedger, LedgerConfig, MAX_SCANNED};
use tandem_personalization::EventKind;

const HOUR: i64 = 3_600_000;

fn ledger() -> ExperimentLedger {
    ExperimentLedger::new(LedgerConfig {
        window_ms: HOUR,
        max_impressions: 1000,
    })
}

#[test]
fn events_count_once_per_impression_within_the_window_for_the_version_that_showed_them() {
    let l = ledger();
    l.shown("u", "a/1", &[1, 2, 3], 0);
    l.event("u", 1, EventKind::Click, 10, 5.0);
    l.event("u", 1, EventKind::Click, 20, 5.0);
    l.event("u", 1, EventKind::Purchase, 30, 5.0);
    l.event("u", 1, EventKind::Purchase, 40, 5.0);
    l.event("u", 2, EventKind::Click, 2 * HOUR, 5.0); // past the window
    l.event("u", 9, EventKind::Click, 10, 5.0); // never shown
    l.event("other", 3, EventKind::Click, 10, 5.0); // shown to someone else
    l.event("u", 3, EventKind::View, 10, 5.0); // views are not outcomes
    let report = l.report(None);
    assert_eq!(report.control.as_deref(), Some("a/1"));
    let a = &report.versions[0];
    assert_eq!(a.totals.impressions, 3);
    assert_eq!(
        a.totals.clicked, 1,
        "two clicks of one impression count once"
    );
    assert_eq!(a.totals.purchased, 1);
    assert!(
        (a.totals.revenue - 10.0).abs() < 1e-9,
        "both purchases bring revenue"
    );
    assert!((a.ctr.value - 1.0 / 3.0).abs() < 1e-9);
    assert!(a.ctr.low < a.ctr.value && a.ctr.value < a.ctr.high);
    assert_eq!(
        a.ctr_p_value, None,
        "the control is not tested against itself"
    );

    // Shown again by another version: the latest impression takes the outcome.
    l.shown("u", "b/2", &[2], 100);
    l.event("u", 2, EventKind::AddToCart, 150, 5.0);
    let report = l.report(Some("a/1"));
    let b = report
        .versions
        .iter()
        .find(|v| v.version == "b/2")
        .expect("b reported");
    assert_eq!((b.totals.impressions, b.totals.carted), (1, 1));
    assert!(b.ctr_p_value.is_some());
}

#[test]
fn the_report_finds_the_version_that_gets_more_clicks() {
    let l = ExperimentLedger::new(LedgerConfig::default());
    // 2,000 answers of 5 items each per version; "better" gets a click on 30 % of answers,
    // "control" on 20 %.
    for n in 0..4000u32 {
        let (user, version) = (
            format!("user-{n}"),
            if n % 2 == 0 { "control" } else { "better" },
        );
        let items: Vec<u32> = (0..5).map(|i| n * 5 + i).collect();
        l.shown(&user, version, &items, 1_000);
        let clicks = if version == "better" { 3 } else { 2 };
        if (n / 2) % 10 < clicks {
            l.event(&user, items[0], EventKind::Click, 2_000, 1.0);
        }
    }
    let report = l.report(Some("control"));
    let find = |v: &str| {
        report
            .versions
            .iter()
            .find(|r| r.version == v)
            .expect("version")
    };
    let (control, better) = (find("control"), find("better"));
    assert_eq!(control.totals.impressions, 10_000);
    assert!((control.ctr.value - 0.04).abs() < 1e-9, "{:?}", control.ctr);
    assert!((better.ctr.value - 0.06).abs() < 1e-9, "{:?}", better.ctr);
    assert!(better.ctr.low > control.ctr.high, "intervals apart");
    let p = better.ctr_p_value.expect("tested");
    assert!(p < 1e-6, "p = {p}");
}

#[test]
fn old_impressions_are_forgotten_within_the_bound() {
    let l = ledger();
    for n in 0..2000u32 {
        l.shown("u", "a/1", &[n], i64::from(n));
    }
    // The 1,000 most recent are kept: an old item's click is no longer attributed.
    l.event("u", 5, EventKind::Click, 2000, 0.0);
    l.event("u", 1999, EventKind::Click, 2000, 0.0);
    assert_eq!(l.report(None).versions[0].totals.clicked, 1);
    l.forget("u");
    l.event("u", 1998, EventKind::Click, 2000, 0.0);
    assert_eq!(
        l.report(None).versions[0].totals.clicked,
        1,
        "erased users attribute nothing"
    );
}

#[test]
fn the_bound_is_exact_when_it_falls_inside_an_answer() {
    let l = ExperimentLedger::new(LedgerConfig {
        window_ms: HOUR,
        max_impressions: 10,
    });
    for answer in 0..4u32 {
        let items: Vec<u32> = (0..3).map(|i| answer * 3 + i).collect();
        l.shown("u", "a/1", &items, i64::from(answer));
    }
    // 12 shown, 10 held: the first answer's two oldest items went, its third stayed.
    l.event("u", 0, EventKind::Click, 10, 0.0);
    l.event("u", 1, EventKind::Click, 10, 0.0);
    assert_eq!(l.report(None).versions[0].totals.clicked, 0);
    l.event("u", 2, EventKind::Click, 10, 0.0);
    l.event("u", 11, EventKind::Click, 10, 0.0);
    assert_eq!(l.report(None).versions[0].totals.clicked, 2);
}

#[test]
fn an_event_is_attributed_among_its_users_latest_impressions() {
    let l = ExperimentLedger::new(LedgerConfig::default());
    let shown = MAX_SCANNED as u32 + 100;
    for n in 0..shown {
        l.shown("crawler", "a/1", &[n], 1_000);
    }
    l.shown("person", "a/1", &[7], 1_000);
    l.event("crawler", 0, EventKind::Click, 2_000, 0.0);
    assert_eq!(
        l.report(None).versions[0].totals.clicked,
        0,
        "shown before the latest MAX_SCANNED"
    );
    l.event(
        "crawler",
        shown - MAX_SCANNED as u32,
        EventKind::Click,
        2_000,
        0.0,
    );
    l.event("person", 7, EventKind::Click, 2_000, 0.0);
    assert_eq!(l.report(None).versions[0].totals.clicked, 2);
}

#[test]
fn a_crawler_keeps_its_latest_impressions_and_pushes_no_one_elses_out() {
    let l = ExperimentLedger::new(LedgerConfig {
        window_ms: HOUR,
        max_impressions: MAX_SCANNED + 10,
    });
    l.shown("person", "a/1", &[7], 0);
    // Answers of 3 items, past MAX_SCANNED and past the bound if all were held.
    let answers = (MAX_SCANNED as u32 + 200) / 3;
    for a in 0..answers {
        l.shown("crawler", "a/1", &[a * 3, a * 3 + 1, a * 3 + 2], 1);
    }
    let last = answers * 3 - 1;
    l.event("person", 7, EventKind::Click, 10, 0.0);
    l.event(
        "crawler",
        last - MAX_SCANNED as u32 + 1,
        EventKind::Click,
        10,
        0.0,
    );
    l.event("crawler", last, EventKind::Click, 10, 0.0);
    assert_eq!(
        l.report(None).versions[0].totals.clicked,
        3,
        "the person's impression and the crawler's latest MAX_SCANNED are held"
    );
    l.event(
        "crawler",
        last - MAX_SCANNED as u32,
        EventKind::Click,
        10,
        0.0,
    );
    assert_eq!(
        l.report(None).versions[0].totals.clicked,
        3,
        "older ones went"
    );
    // Once the window has passed, every answer expires (the dropped ones included) and the
    // ledger takes new impressions up to its bound again.
    l.shown("person", "a/1", &[8], 2 * HOUR);
    l.event("person", 8, EventKind::Click, 2 * HOUR + 1, 0.0);
    l.event("crawler", last, EventKind::AddToCart, 2 * HOUR + 1, 0.0);
    let totals = l.report(None).versions[0].totals;
    assert_eq!((totals.clicked, totals.carted), (4, 0));
}
