//! `hotdog top` as an operator sees it: run under tmux against a real hotdog that is forwarding
//! to a real broker, read with capture-pane, driven with send-keys.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::{config_yaml, free_port, fresh_topic, keep_sending, wait_until, Hotdog, HOTDOG};

/// A tmux server of this test's own, ended when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `hotdog top --url URL` in a 150×45 terminal.
    fn top(name: &str, url: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("hotdog-{name}-{}", std::process::id()),
        };
        let command = format!("{HOTDOG} top --url {url}");
        let ok = tmux
            .run(&["new-session", "-d", "-x", "150", "-y", "45", &command])
            .0;
        assert!(ok, "tmux could not start {command}");
        tmux
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed (dev/deps.sh installs it)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p"]).1
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            assert!(self.run(&["send-keys", k]).0, "send-keys {k}");
        }
    }

    /// Waits until the screen satisfies `check`; the last screen either way.
    fn wait_screen(&self, check: impl Fn(&str) -> bool) -> (bool, String) {
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(15), || {
            last = self.screen();
            check(&last)
        });
        (ok, last)
    }

    fn running(&self) -> bool {
        self.run(&["has-session"]).0
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The figures on the screen's row that starts with `name`, in whichever table (two stand side
/// by side, each inside its border).
fn row(screen: &str, name: &str) -> Option<Vec<f64>> {
    screen.lines().flat_map(|l| l.split('│')).find_map(|cell| {
        let rest = cell.trim().strip_prefix(name)?;
        rest.starts_with(' ').then(|| {
            rest.split_whitespace()
                .filter_map(|n| n.replace(',', "").parse().ok())
                .collect()
        })
    })
}

#[test]
fn top_shows_live_figures_per_listener_rule_and_topic_and_sorts_and_filters() {
    let (broker, topic) = fresh_topic("top");
    let rules = format!(
        "  - name: errors\n    regex: 'error'\n    actions:\n      - type: forward\n        topic: '{topic}'\n\
         \x20 - name: rest\n    regex: 'seq'\n    actions:\n      - type: forward\n        topic: '{topic}'\n"
    );
    let hotdog = Hotdog::start_config(&config_yaml(broker, "", &rules));
    let stop = Arc::new(AtomicBool::new(false));
    // About 1,500 lines/s, one in three an error, until the test is done.
    let sender = keep_sending(hotdog.addr(), stop.clone());
    let listener = hotdog.addr();
    let top = Tmux::top("top", &format!("http://127.0.0.1:{}", hotdog.status_port));

    // Every table has its row, with lines flowing now: rates above zero.
    let flowing = |s: &str| {
        let rate = |name: &str| row(s, name).and_then(|r| r.first().copied());
        rate(&listener).is_some_and(|r| r > 0.0)
            && rate("errors").is_some_and(|r| r > 0.0)
            && rate("rest").is_some_and(|r| r > 0.0)
            && rate(&topic).is_some_and(|r| r > 0.0)
            && s.contains("latency p50")
            && !s.contains("latency p50 -")
    };
    let (ok, screen) = top.wait_screen(flowing);
    assert!(ok, "no live figures:\n{screen}");
    assert!(screen.contains("Rules (2)"), "{screen}");
    // Rates are per second: 1,500 lines/s sent, in batches, on a busy machine. The matched/s of
    // `rest` is about twice that of `errors`.
    let lines = row(&screen, &listener).expect("listener row");
    assert!((200.0..5000.0).contains(&lines[0]), "{screen}");
    assert!(
        lines[1] >= lines[0],
        "the total is below the rate: {screen}"
    );
    // The sort by rate puts `rest` (two lines in three) above `errors`.
    let at = |s: &str, name: &str| s.lines().position(|l| l.contains(&format!("│{name} ")));
    assert!(at(&screen, "rest") < at(&screen, "errors"), "{screen}");

    // `s`: by total, then by name (`errors` first).
    top.keys(&["s"]);
    let (ok, screen) = top.wait_screen(|s| s.contains("sort: total"));
    assert!(ok, "{screen}");
    top.keys(&["s"]);
    let (ok, screen) = top.wait_screen(|s| s.contains("sort: name"));
    assert!(ok, "{screen}");
    assert!(at(&screen, "errors") < at(&screen, "rest"), "{screen}");

    // `/` filters by name: only `errors` is left among the rules.
    top.keys(&["/", "err", "Enter"]);
    let (ok, screen) = top.wait_screen(|s| s.contains("Rules (1)") && s.contains("filter: err "));
    assert!(ok, "{screen}");
    assert!(
        row(&screen, "errors").is_some() && row(&screen, "rest").is_none(),
        "{screen}"
    );

    // One connection to the status server, kept from one reading to the next: the same
    // local port now and three readings later. The server cuts every connection after
    // CONNECTION_TIME (30 s), and on a busy machine the test may reach this point near that
    // age: of two windows of 3.2 s one after the other, at most one holds such a cut, so the
    // other must show one connection throughout. A connection per reading fails both.
    let port = hotdog.status_port;
    let connections = || {
        let out = std::process::Command::new("ss")
            .args([
                "-Htn",
                "state",
                "established",
                &format!("( dport = :{port} )"),
            ])
            .output()
            .expect("ss");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut local: Vec<String> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
            .collect();
        local.sort();
        local
    };
    let kept_one = |(first, last): &(Vec<String>, Vec<String>)| first.len() == 1 && last == first;
    let mut windows = Vec::new();
    while windows.len() < 2 && !windows.last().is_some_and(kept_one) {
        wait_until(Duration::from_secs(3), || connections().len() == 1);
        let first = connections();
        std::thread::sleep(Duration::from_millis(3_200));
        windows.push((first, connections()));
    }
    assert!(
        windows.iter().any(kept_one),
        "no window of 3.2 s kept one connection: {windows:?}"
    );

    // `q` quits, and the terminal is hotdog's no more.
    top.keys(&["q"]);
    assert!(wait_until(Duration::from_secs(5), || !top.running()));
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender");

    // A status server that is not there is said on the screen, and top keeps asking.
    let nowhere = Tmux::top("nowhere", &format!("http://127.0.0.1:{}", free_port()));
    let (ok, screen) = nowhere.wait_screen(|s| s.contains("cannot connect to the status server"));
    assert!(ok, "{screen}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(nowhere.running(), "top gave up");
    nowhere.keys(&["q"]);
    assert!(wait_until(Duration::from_secs(5), || !nowhere.running()));
}
