//! PROTOCOL.md is enough to write a client in another language: the Python example client
//! (`examples/python/vltava_client.py`, written from the document with only `msgpack`) runs its
//! demo against a real node and must read back exactly what it wrote.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vltava_tests::TestNode;

/// How long the demo may run before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// The line the demo prints when everything it read back matched what it wrote.
const SUMMARY: &str = "vltava python client demo: OK";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/vltava_client.py")
}

/// Fails (does not skip) when python3 or its msgpack package is missing: `scripts/test` installs msgpack.
fn require_msgpack() {
    let check = Command::new("python3")
        .args(["-c", "import msgpack"])
        .output();
    match check {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "python3 cannot import msgpack, which the Python example client needs: run `pip install msgpack`\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => {
            panic!("cannot run python3 ({e}); install Python 3 and then `pip install msgpack`")
        }
    }
}

/// Collects a child's output stream on a thread, so a full pipe never blocks the child.
fn drain(stream: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stream) = stream {
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// Waits for `child` up to `timeout`; kills it past that. `None` when it was killed.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for python3") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn python_client_demo_reads_back_what_it_wrote() {
    require_msgpack();
    let script = script();
    assert!(script.exists(), "{} is missing", script.display());
    let node = TestNode::start();

    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&node.addr)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning python3");
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_with_timeout(&mut child, SCRIPT_TIMEOUT);
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");

    let report = || {
        format!(
            "python3 {} {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- node log ---\n{}",
            script.display(),
            node.addr,
            node.log_text()
        )
    };
    let Some(status) = status else {
        panic!(
            "the Python demo did not finish within {SCRIPT_TIMEOUT:?}\n{}",
            report()
        );
    };
    assert!(
        status.success(),
        "the Python demo failed ({status})\n{}",
        report()
    );
    assert!(
        stdout.contains(SUMMARY),
        "the Python demo did not print {SUMMARY:?}\n{}",
        report()
    );
}
