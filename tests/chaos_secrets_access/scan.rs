//! Scenario 11's tools: a random canary, a RabbitMQ user that holds it, the search.

use super::*;

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; n];
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    f.read_exact(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A RabbitMQ user of the environment's node, deleted on drop.
pub struct RabbitUser(String);

impl RabbitUser {
    pub fn new(user: &str, password: &str) -> RabbitUser {
        ctl(&["add_user", user, password]);
        ctl(&["set_permissions", "-p", "/", user, ".*", ".*", ".*"]);
        RabbitUser(user.to_owned())
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = env().client("rabbitmqctl-env", &["delete_user", &self.0]);
    }
}

pub fn ctl(args: &[&str]) {
    let out = env().client("rabbitmqctl-env", args);
    assert!(
        out.status.success(),
        "rabbitmqctl {}: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where scenario 11 looked and how often it found a needle.
#[derive(Default)]
pub struct Search {
    pub places: Vec<String>,
    pub bytes: u64,
    pub hits: Vec<String>,
}

impl Search {
    pub fn scan(&mut self, place: &str, text: &str, needles: &[(&str, &str)]) {
        self.places.push(place.to_owned());
        self.bytes += text.len() as u64;
        for (what, needle) in needles {
            let n = text.matches(needle).count();
            if n > 0 {
                self.hits.push(format!("{what} {n}× in {place}"));
            }
        }
    }
}

/// The files under `dir`, recursively.
pub fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The password of a `scheme://user:password@host` URL.
pub fn url_password(url: &str) -> String {
    let creds = url.split_once("://").unwrap().1.split_once('@').unwrap().0;
    creds.split_once(':').unwrap().1.to_owned()
}
