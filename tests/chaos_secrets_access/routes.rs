//! Scenario 12's and 11's walk over the API: the operations of its OpenAPI document, one call
//! of each on a target, what each token must get; and tokens issued again as of the past.

use super::*;

/// One operation of the API's OpenAPI document; `sse` asks its event-stream answer.
#[derive(Clone, Debug)]
pub struct Op {
    pub method: Method,
    pub path: String,
    /// `security: [{}]`: open to all.
    pub open: bool,
    /// The status codes the document lists.
    pub codes: Vec<u16>,
    pub body: bool,
    pub sse: bool,
}

impl Op {
    /// The sign-in, whose token is in the body.
    pub fn signs_in(&self) -> bool {
        self.path == "/api/v1/session" && self.method == Method::POST
    }

    pub fn label(&self) -> String {
        let sse = if self.sse { " (SSE)" } else { "" };
        format!("{} {}{sse}", self.method, self.path)
    }
}

/// Every operation of the document `/api/v1/openapi.json`, and a second one for each answer
/// that can be an event stream.
pub async fn operations(site: &Site) -> Vec<Op> {
    let doc: Value = serde_json::from_str(&site.text("/api/v1/openapi.json").await).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let responses = op["responses"].as_object().cloned().unwrap_or_default();
            let op = Op {
                method,
                path: path.clone(),
                open: op["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().all(|r| r == &json!({}))),
                codes: responses.keys().filter_map(|c| c.parse().ok()).collect(),
                body: op.get("requestBody").is_some(),
                sse: false,
            };
            let streams = responses
                .values()
                .any(|r| r["content"].get("text/event-stream").is_some());
            if streams {
                ops.push(Op {
                    sse: true,
                    ..op.clone()
                });
            }
            ops.push(op);
        }
    }
    ops
}

/// What the operations are called on: a namespace, a run (by operation), a stage to re-run
/// from, a schedule, a Workflow and connector for the trigger, an asset of the page.
pub struct Target {
    pub ns: String,
    pub run: Box<dyn Fn(&Op) -> String + Send + Sync>,
    pub stage: String,
    pub schedule: String,
    pub workflow: String,
    pub connector: String,
    pub asset: String,
    pub port: u16,
}

/// The answer to `op` on `target` with `token` (bearer; for the sign-in, in the body): its
/// status and up to 1 MiB of its body (an event stream is read for at most `stream_for`).
pub async fn call(
    op: &Op,
    target: &Target,
    token: Option<&str>,
    stream_for: Duration,
) -> (u16, String) {
    let run = (target.run)(op);
    let path = op
        .path
        .replace("{namespace}", &target.ns)
        .replace(
            "{name}",
            if op.path.contains("schedules/") {
                &target.schedule
            } else {
                &run
            },
        )
        .replace("{stage}", "gate")
        .replace("{seq}", "1")
        .replace("{file}", &target.asset);
    let runs = json!({"runs": [{"namespace": target.ns, "name": run}]});
    let body = match path.rsplit(['/', ':']).next().unwrap_or_default() {
        _ if op.signs_in() => json!({"token": token.unwrap_or_default()}),
        "trigger" => {
            json!({"namespace": target.ns, "workflow": target.workflow, "connector": target.connector})
        }
        "rerun" => json!({"fromStage": target.stage}),
        "approve" | "reject" => json!({"comment": "chaos"}),
        "export" => json!({"runs": runs["runs"], "format": "csv"}),
        "delete" | "stop" if path.contains(':') => runs,
        _ => json!({}),
    };
    let mut req = http().request(
        op.method.clone(),
        format!("http://127.0.0.1:{}{path}", target.port),
    );
    if op.method != Method::GET {
        req = req.header("x-devset-csrf", "1");
    }
    if op.body {
        req = req.json(&body);
    }
    if op.sse {
        req = req.header(header::ACCEPT, "text/event-stream");
    }
    if let Some(t) = token.filter(|_| !op.signs_in()) {
        req = req.bearer_auth(t);
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", op.label()));
    let code = res.status().as_u16();
    let mut text = Vec::new();
    let mut chunks = res.bytes_stream();
    let deadline = tokio::time::Instant::now() + stream_for;
    while let Ok(Some(Ok(c))) = tokio::time::timeout_at(deadline, chunks.next()).await {
        text.extend_from_slice(&c);
        if text.len() > 1 << 20 {
            break;
        }
    }
    (code, String::from_utf8_lossy(&text).into_owned())
}

pub const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 with padding, or base64url without (`url`).
pub fn b64(bytes: &[u8], url: bool) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            let c = B64[(n >> (18 - 6 * i) & 63) as usize] as char;
            out.push(match c {
                '+' if url => '-',
                '/' if url => '_',
                c => c,
            });
        }
        if !url {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

/// The bytes of base64url (without padding).
pub fn unb64url(text: &str) -> Vec<u8> {
    let digit = |c: u8| {
        B64.iter().position(|&d| d == c).unwrap_or_else(|| match c {
            b'-' => 62,
            b'_' => 63,
            _ => panic!("{c} is not base64url"),
        }) as u32
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | digit(*c) << (18 - 6 * i));
        out.extend((0..chunk.len() - 1).map(|i| (n >> (16 - 8 * i)) as u8));
    }
    out
}

/// `kubectl create -f -` of a TokenReview of `token`: its status.
pub fn token_review(token: &str) -> Value {
    use std::io::Write;
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token}});
    let mut child = env()
        .command("kubectl")
        .args(["create", "-o", "json", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(review.to_string().as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["status"].clone()
}

/// `token` (a TokenRequest's) with `iat`, `nbf` and `exp` moved so that it expired `ago`
/// seconds ago (`None`: unmoved), signed again
/// with the API server's service-account key (`k8s/sa.key` of the environment, ES256): the
/// token the API server would have issued that much earlier.
pub fn reissued(token: &str, ago: Option<i64>) -> String {
    use std::io::Write;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&unb64url(parts[1])).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let shift = ago.map_or(0, |ago| claims["exp"].as_i64().unwrap() - (now - ago));
    for c in ["iat", "nbf", "exp"] {
        claims[c] = json!(claims[c].as_i64().unwrap() - shift);
    }
    let signed = format!("{}.{}", parts[0], b64(claims.to_string().as_bytes(), true));
    let key = std::path::Path::new(env().var("DEVSET_ENV_DIR")).join("k8s/sa.key");
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signed.as_bytes())
        .unwrap();
    let der = child.wait_with_output().unwrap().stdout;
    // ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }; a JWT carries r and s as 32 bytes
    // each.
    let mut at = if der[1] & 0x80 != 0 {
        2 + (der[1] & 0x7f) as usize
    } else {
        2
    };
    let mut raw = Vec::new();
    for _ in 0..2 {
        let len = der[at + 1] as usize;
        let int = &der[at + 2..at + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        raw.extend(std::iter::repeat_n(0, 32 - int.len()));
        raw.extend_from_slice(int);
        at += 2 + len;
    }
    format!("{signed}.{}", b64(&raw, true))
}

/// The token variants of scenario 12.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Token {
    None,
    Expired,
    Foreign,
    Proper,
}

/// The answers scenario 12 expects of `op` for `token`, from the document: open routes answer
/// alike whatever the token (`none` is the answer without one); the sign-in takes its token
/// in the body; other routes 401 without a valid token, 403 to a foreign one where the route
/// documents a 403 (else it answers what the caller may see: nothing of the namespace) and a
/// documented 2xx to the proper one.
pub fn expected(op: &Op, token: Token, none: u16) -> Vec<u16> {
    let success: Vec<u16> = op
        .codes
        .iter()
        .copied()
        .filter(|c| (200..300).contains(c))
        .collect();
    if op.signs_in() {
        return match token {
            Token::None => vec![400, 401],
            Token::Expired => vec![401],
            Token::Foreign | Token::Proper => vec![200],
        };
    }
    match token {
        _ if op.open => vec![none],
        Token::None | Token::Expired => vec![401],
        Token::Foreign if op.codes.contains(&403) => vec![403],
        Token::Foreign | Token::Proper => success,
    }
}
