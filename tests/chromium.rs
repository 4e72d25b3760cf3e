//! Loading a page in real headless Chromium (Debian's `chromium`) and
//! reading the DOM its scripts built, for the HTML report's tests and
//! benchmark.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Chromium gets this long to load a page; a hung browser fails the test
/// instead of hanging it.
const LOAD_LIMIT: Duration = Duration::from_secs(180);

/// The DOM of `page` after its scripts ran (`--dump-dom`), and how long
/// Chromium took from start to exit (which includes printing the DOM).
pub fn dump_dom(page: &Path) -> (String, Duration) {
    dump_dom_at(page, "")
}

/// As [`dump_dom`], with `fragment` (`#…`) added to the page's address.
pub fn dump_dom_at(page: &Path, fragment: &str) -> (String, Duration) {
    let (dom, took) = run(page, fragment, "--dump-dom");
    assert!(!dom.is_empty(), "chromium printed no DOM");
    (dom, took)
}

/// How long Chromium takes from start until it has drawn `page` into a
/// screenshot (`--screenshot`, the window's first screenful) and exited.
pub fn screenshot(page: &Path, png: &Path) -> Duration {
    let _ = std::fs::remove_file(png);
    let (_, took) = run(page, "", &format!("--screenshot={}", png.display()));
    assert!(png.is_file(), "chromium wrote no screenshot");
    took
}

/// Runs headless Chromium on `page` with `action`; its stdout and how long
/// it took from start to exit.
fn run(page: &Path, fragment: &str, action: &str) -> (String, Duration) {
    let chromium = crate::require_tool("chromium", "chromium");
    let profile = tempfile::tempdir().unwrap();
    let page = page.canonicalize().unwrap();
    let started = Instant::now();
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .args(["--no-first-run", "--disable-extensions"])
        .arg("--disable-background-networking")
        .arg("--window-size=1280,900")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(action)
        .arg(format!("file://{}{fragment}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read while it runs: a large DOM would fill the pipe and stall it.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        stdout.read_to_string(&mut dom).map(|_| dom)
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LOAD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not load {} within {LOAD_LIMIT:?}",
                page.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let dom = reader.join().unwrap().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .ok();
    assert!(status.success(), "chromium failed ({status}): {stderr}");
    (dom, took)
}

/// Text of serialised HTML back as it reads (the entities Chromium writes
/// in text nodes and attributes).
pub fn unescape(html: &str) -> String {
    html.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The inner HTML of every element that starts with `open` (e.g.
/// `<pre class="output">`) and ends at the next `</tag>`: fine for
/// elements that hold only text.
pub fn texts_of(dom: &str, open: &str) -> Vec<String> {
    let tag = open[1..].split([' ', '>']).next().unwrap();
    let close = format!("</{tag}>");
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(open) {
        rest = &rest[at + open.len()..];
        let end = rest.find(&close).unwrap_or(rest.len());
        found.push(unescape(&rest[..end]));
        rest = &rest[end..];
    }
    found
}
