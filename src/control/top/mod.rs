//! `hotdog top`: a terminal view of a running hotdog, refreshed every second from its status
//! server's `/stats`: lines in and out per listener, rule and topic, queues, delivery latency,
//! connections, the spool, and what was lost by reason. `s` sorts, `/` filters, `q` quits.

use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};

use crate::control::client::{self, Server};

pub mod model;
pub mod view;

use model::{Choice, Key, Reading, Screen};

/// How often `/stats` is read.
const REFRESH: Duration = Duration::from_secs(1);
/// How long one reading may take before it counts as failed.
const PATIENCE: Duration = Duration::from_secs(2);

/// Shows the hotdog whose status server is `server` until the operator
/// quits. An error is one of the terminal's; a status server that does not answer is shown on
/// the screen and asked again.
pub fn run(server: &Server, token: Option<&str>) -> Result<(), String> {
    let mut terminal = ratatui::try_init().map_err(|e| format!("cannot use the terminal: {e}"))?;
    let shown = crate::base::runtime::block_on(1, show(&mut terminal, server, token));
    ratatui::restore();
    shown
}

async fn show(
    terminal: &mut ratatui::DefaultTerminal,
    server: &Server,
    token: Option<&str>,
) -> Result<(), String> {
    let address = server.address.as_str();
    let mut choice = Choice::default();
    let mut before: Option<Reading> = None;
    let mut now: Option<Reading> = None;
    let mut trouble: Option<String> = None;
    let mut next = Instant::now();
    // One connection, kept from one reading to the next.
    let mut client = client::Client::new(server, token);
    loop {
        if Instant::now() >= next {
            next = Instant::now() + REFRESH;
            match read(&mut client, address).await {
                Ok(r) => {
                    before = now.replace(r);
                    trouble = None;
                }
                Err(e) => trouble = Some(e),
            }
        }
        let screen = now
            .as_ref()
            .map(|n| model::screen(before.as_ref(), n, &choice));
        terminal
            .draw(|f| draw(f, screen.as_ref(), &choice, address, trouble.as_deref()))
            .map_err(|e| format!("cannot draw: {e}"))?;
        let wait = next.saturating_duration_since(Instant::now());
        if !event::poll(wait).map_err(|e| format!("cannot read the keyboard: {e}"))? {
            continue;
        }
        let pressed = match event::read().map_err(|e| format!("cannot read the keyboard: {e}"))? {
            Event::Key(k) if k.kind == KeyEventKind::Press => match k.code {
                KeyCode::Char(c) => Some(Key::Char(c)),
                KeyCode::Enter => Some(Key::Enter),
                KeyCode::Esc => Some(Key::Esc),
                KeyCode::Backspace => Some(Key::Backspace),
                _ => None,
            },
            _ => None,
        };
        if pressed.is_some_and(|k| choice.key(k)) {
            return Ok(());
        }
    }
}

fn draw(
    frame: &mut ratatui::Frame,
    screen: Option<&Screen>,
    choice: &Choice,
    address: &str,
    trouble: Option<&str>,
) {
    let heading = view::Heading { address, trouble };
    match screen {
        Some(s) => view::draw(frame, s, choice, &heading),
        None => frame.render_widget(
            ratatui::widgets::Paragraph::new(format!(
                "hotdog top: asking {address}... {}",
                trouble.unwrap_or("")
            )),
            frame.area(),
        ),
    }
}

/// One reading of `/stats` and `/health`, or why there is none.
async fn read(client: &mut client::Client<'_>, address: &str) -> Result<Reading, String> {
    let asked = async {
        let (status, body) = client.get("/stats").await?;
        if !status.is_success() {
            return Err(client::refused(status, &body));
        }
        let mut reading = Reading::parse(&body, Instant::now())?;
        // 503 says the broker is away: an answer to show, not a failure.
        let (_, health) = client.get("/health").await?;
        reading.health = String::from_utf8_lossy(&health)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(reading)
    };
    let late = async {
        smol::Timer::after(PATIENCE).await;
        Err(format!("{address} did not answer within {PATIENCE:?}"))
    };
    asked.or(late).await
}
