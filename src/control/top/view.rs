//! Draws a [`Screen`] with ratatui: a header of the running hotdog's figures, then the tables of
//! listeners, rules, topics, and what was lost.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row as TableRow, Table};
use ratatui::Frame;

use super::model::{Choice, Row, Screen};

/// What the header says besides the figures: where hotdog is, and whether the last reading
/// failed.
pub struct Heading<'a> {
    pub address: &'a str,
    pub trouble: Option<&'a str>,
}

pub fn draw(frame: &mut Frame, screen: &Screen, choice: &Choice, heading: &Heading) {
    let listeners = (screen.listeners.len() as u16).clamp(1, 6) + 3;
    let losses = (screen.losses.len() as u16).clamp(1, 8) + 3;
    let [head, listen, middle, lost] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Length(listeners),
        Constraint::Min(6),
        Constraint::Length(losses),
    ])
    .areas(frame.area());
    let [rules, topics] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(middle);
    frame.render_widget(header(screen, choice, heading), head);
    table(
        frame,
        listen,
        "Listeners",
        &["listener", "lines/s", "lines"],
        &screen.listeners,
    );
    table(
        frame,
        rules,
        "Rules",
        &["rule", "matched/s", "matched"],
        &screen.rules,
    );
    topic_table(frame, topics, &screen.topics);
    table(
        frame,
        lost,
        "Lost, refused, dead-lettered, unrouted",
        &["what", "per s", "total"],
        &screen.losses,
    );
}

fn header<'a>(s: &Screen, choice: &Choice, heading: &Heading) -> Paragraph<'a> {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1} ms"));
    let mut lines = vec![
        Line::from(format!(
            "hotdog {} at {}   configuration generation {}{}",
            s.version,
            heading.address,
            s.generation,
            if s.reload_failed > 0 {
                format!(" ({} reloads failed)", s.reload_failed)
            } else {
                String::new()
            }
        )),
        Line::from(format!("broker: {}", s.health)),
        Line::from(format!(
            "in {} lines/s   delivered {} records/s   in flight {}   connections {}   RELP sessions {}",
            count(s.lines_rate),
            count(s.delivered_rate),
            s.in_flight,
            s.connections,
            s.relp_sessions
        )),
        Line::from(format!(
            "outbox {}   librdkafka queue {}   latency p50 {}   p99 {}",
            s.outbox,
            s.librdkafka,
            ms(s.p50_ms),
            ms(s.p99_ms)
        )),
        Line::from(match &s.spool {
            Some(sp) => format!(
                "spool {} records   {}   oldest {} s   full {} times",
                sp.records,
                bytes(sp.bytes),
                sp.oldest_seconds,
                sp.full
            ),
            None => "spool: none".to_string(),
        }),
    ];
    let keys = format!(
        "sort: {} (s)   filter: {}{} (/)   quit (q)",
        choice.sort.label(),
        if choice.filter.is_empty() && !choice.editing {
            "none"
        } else {
            choice.filter.as_str()
        },
        if choice.editing { "_" } else { "" }
    );
    lines.push(match heading.trouble {
        Some(t) => Line::styled(
            format!("{t} (trying again every second)"),
            Style::new().add_modifier(Modifier::REVERSED),
        ),
        None => Line::styled(keys, Style::new().add_modifier(Modifier::DIM)),
    });
    Paragraph::new(lines)
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn table(frame: &mut Frame, area: Rect, title: &str, names: &[&'static str; 3], rows: &[Row]) {
    let body = rows
        .iter()
        .map(|r| TableRow::new(vec![r.name.clone(), count(r.rate), count(r.total as f64)]));
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(12),
        Constraint::Length(14),
    ];
    frame.render_widget(
        Table::new(body, widths)
            .header(TableRow::new(names.to_vec()).style(bold()))
            .block(Block::bordered().title(format!("{title} ({})", rows.len()))),
        area,
    );
}

fn topic_table(frame: &mut Frame, area: Rect, rows: &[Row]) {
    let body = rows.iter().map(|r| {
        TableRow::new(vec![
            r.name.clone(),
            count(r.rate),
            count(r.out_rate.unwrap_or(0.0)),
            count(r.total as f64),
            count(r.dead.unwrap_or(0) as f64),
        ])
    });
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(11),
        Constraint::Length(7),
    ];
    frame.render_widget(
        Table::new(body, widths)
            .header(TableRow::new(vec!["topic", "sent/s", "acked/s", "sent", "dead"]).style(bold()))
            .block(Block::bordered().title(format!("Topics ({})", rows.len()))),
        area,
    );
}

/// A count with thousands separated: `12,345`.
fn count(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(b: i64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::top::model::{screen, Reading};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    #[test]
    fn counts_and_sizes_read_as_people_write_them() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.4), "999");
        assert_eq!(count(1234.0), "1,234");
        assert_eq!(count(1234567.0), "1,234,567");
        assert_eq!(bytes(512), "512.0 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }

    #[test]
    fn the_screen_shows_every_table_with_its_rows() {
        let body = br#"{"version":"1.0.0","stats":{"lines":10,"listener.127.0.0.1:514.lines":10,
            "rules.errors.matched":4,"kafka.submitted.logs":10,"kafka.delivered.logs":10,
            "udp.dropped":2,"config.generation":3}}"#;
        let mut now = Reading::parse(body, std::time::Instant::now()).expect("reads");
        now.health = "ok: a Kafka broker is reachable".into();
        let choice = Choice::default();
        let s = screen(None, &now, &choice);
        let mut terminal = Terminal::new(TestBackend::new(120, 30)).expect("terminal");
        let heading = Heading {
            address: "127.0.0.1:8080",
            trouble: None,
        };
        terminal
            .draw(|f| draw(f, &s, &choice, &heading))
            .expect("draws");
        let text: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        for shown in [
            "hotdog 1.0.0 at 127.0.0.1:8080",
            "configuration generation 3",
            "broker: ok: a Kafka broker is reachable",
            "Listeners (1)",
            "127.0.0.1:514",
            "Rules (1)",
            "errors",
            "Topics (1)",
            "logs",
            "udp.dropped",
            "spool: none",
            "sort: rate (s)",
        ] {
            assert!(text.contains(shown), "{shown} not on the screen:\n{text}");
        }
    }
}
