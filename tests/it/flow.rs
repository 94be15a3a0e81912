//! Flow control (issue 14, part A): message options producers set
//! (priority), per-key concurrency, rate limits.

use crate::util::Env;

#[test]
fn a_priority_is_checked_where_it_enters_and_carried_with_the_message() {
    let env = Env::new(&["test-spin"], "");
    for bad in [
        vec!["--priority", "10"],
        vec!["--priority", "high"],
        vec!["--header", "sluice-priority=x"],
        vec![
            "--header",
            "Sluice-Priority=1",
            "--header",
            "sluice-priority=2",
        ],
    ] {
        let mut args = vec!["post", "test.spin", "{}"];
        args.extend(bad.iter().copied());
        let out = env.sluice(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(
            err.contains("priority") && err.lines().count() <= 3,
            "{bad:?}: {err}"
        );
    }
    assert!(
        env.jobs("test.spin").is_empty(),
        "a refused post left a job"
    );
    let id = env.ok(&["post", "test.spin", "{}", "--priority", "7"]);
    let header = env.ok(&["post", "test.spin", "{}", "--header", "SLUICE-PRIORITY=3"]);
    // The flag wins over a header of the same name.
    let both = env.ok(&[
        "post",
        "test.spin",
        "{}",
        "--header",
        "sluice-priority=1",
        "--priority",
        "2",
    ]);
    for (id, want) in [(id, "7"), (header, "3"), (both, "2")] {
        let job = env.job(id.trim());
        let given: Vec<_> = job
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("sluice-priority"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(given, [want], "{:?}", job.headers);
    }
}
