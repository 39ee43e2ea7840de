//! The client side of the API, for `sluice query` and `sluice executions`: where the
//! server is and who is asking (`SLUICE_URL`, `SLUICE_TOKEN`, or a profile file), the
//! calls, and the `query` flow (submit, follow with a progress bar, stream the result,
//! cancel on Ctrl-C or `--timeout`).
//!
//! It speaks only HTTP to a Sluice API, like any other client: it never reads the
//! configuration, Postgres or ClickHouse. Results stream to their destination and are
//! never held in memory.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::model::{ExecutionView, SubmitResponse};
use crate::execution::Status;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API answered with an error body.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the API: {0}")]
    Protocol(String),
    #[error("cannot write the result: {0}")]
    Output(#[from] std::io::Error),
}

/// Where the API is and the credential sent to it.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// `url` and `token` of a profile file.
#[derive(serde::Deserialize, Default)]
struct Profile {
    url: Option<String>,
    token: Option<String>,
}

impl Client {
    /// From `SLUICE_URL` and `SLUICE_TOKEN`, each falling back to the profile file
    /// (`SLUICE_PROFILE`, else `$XDG_CONFIG_HOME/sluice/client.toml` or
    /// `~/.config/sluice/client.toml`), the URL to `http://127.0.0.1:8080`.
    pub fn from_env() -> Result<Client, ClientError> {
        let profile = profile_path()
            .filter(|p| p.exists())
            .map(|p| read_profile(&p))
            .transpose()?
            .unwrap_or_default();
        let url = std::env::var("SLUICE_URL")
            .ok()
            .or(profile.url)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token = std::env::var("SLUICE_TOKEN").ok().or(profile.token);
        Client::new(&url, token.as_deref())
    }

    pub fn new(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    ClientError::Config("SLUICE_TOKEN is not a valid header value".into())
                })?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Client {
            base: url.trim_end_matches('/').to_string(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|source| ClientError::Http {
            url: url.to_string(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Err(ClientError::Api {
            status,
            code: body["error"]["code"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            message: body["error"]["message"]
                .as_str()
                .unwrap_or("no error message")
                .to_string(),
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        self.send(request, url)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn submit(&self, body: &Value) -> Result<SubmitResponse, ClientError> {
        let url = self.url("/v1/executions");
        self.json(self.http.post(&url).json(body), &url).await
    }

    /// The execution, held up to `wait` seconds until it ends.
    pub async fn get(&self, id: &str, wait: u32) -> Result<ExecutionView, ClientError> {
        let url = self.url(&format!("/v1/executions/{id}"));
        self.json(self.http.get(&url).query(&[("wait", wait)]), &url)
            .await
    }

    /// The raw answer of a GET, for `ls` and `get` (printed as they come).
    pub async fn get_value(&self, path: &str) -> Result<Value, ClientError> {
        let url = self.url(path);
        self.json(self.http.get(&url), &url).await
    }

    pub async fn cancel(&self, id: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("/v1/executions/{id}/cancel"));
        self.json(self.http.post(&url), &url).await
    }

    pub async fn result_url(
        &self,
        id: &str,
        expires_in: Option<u64>,
    ) -> Result<Value, ClientError> {
        let url = self.url(&format!("/v1/executions/{id}/result-url"));
        let body = expires_in.map_or(json!({}), |e| json!({ "expires_in": e }));
        let mut v: Value = self.json(self.http.post(&url).json(&body), &url).await?;
        if let Some(link) = v["url"].as_str().filter(|u| u.starts_with('/')) {
            v["url"] = json!(self.url(link));
        }
        Ok(v)
    }

    /// Streams the stored result of `id` into `out`; the number of bytes.
    pub async fn download(&self, id: &str, out: &mut dyn Write) -> Result<u64, ClientError> {
        let url = self.url(&format!("/v1/executions/{id}/result"));
        let response = self.send(self.http.get(&url), &url).await?;
        let mut stream = response.bytes_stream();
        let mut total = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| ClientError::Http {
                url: url.clone(),
                source,
            })?;
            out.write_all(&chunk)?;
            total += chunk.len() as u64;
        }
        out.flush()?;
        Ok(total)
    }

    /// Streams the stored result of `id` into the file at `path`, or to stdout.
    pub async fn download_to(&self, id: &str, path: Option<&Path>) -> Result<u64, ClientError> {
        match path {
            Some(path) => {
                let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
                self.download(id, &mut file).await
            }
            None => self.download(id, &mut std::io::stdout().lock()).await,
        }
    }
}

fn profile_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SLUICE_PROFILE") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".config")))
        .ok()?;
    Some(base.join("sluice").join("client.toml"))
}

fn read_profile(path: &Path) -> Result<Profile, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))
}

/// What `sluice query` runs.
pub struct QueryOptions {
    pub sql: String,
    pub tier: Option<String>,
    pub format: Option<String>,
    /// `name=value` pairs, sent as query parameters.
    pub params: Vec<(String, String)>,
    /// Where the result goes; stdout when absent.
    pub output: Option<PathBuf>,
    /// Cancel (and fail) after this long, queueing included; also the execution's own
    /// `timeout` on the server.
    pub timeout: Option<Duration>,
    /// Print the execution id and return at once.
    pub no_wait: bool,
}

/// How `sluice query` ended, as its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryExit {
    Succeeded = 0,
    Failed = 1,
    /// `--timeout` passed: canceled on the server (as `timeout(1)` exits).
    TimedOut = 124,
    /// Ctrl-C: canceled on the server.
    Interrupted = 130,
}

/// Submits, follows and downloads (see the module comment). Messages go to stderr; the
/// result to stdout or the output file.
pub async fn query(
    client: &Client,
    opts: QueryOptions,
    interrupt: CancellationToken,
) -> Result<QueryExit, ClientError> {
    let mut body = json!({ "sql": opts.sql });
    if let Some(t) = &opts.tier {
        body["tier"] = json!(t);
    }
    if let Some(f) = &opts.format {
        body["format"] = json!(f);
    }
    if !opts.params.is_empty() {
        body["parameters"] = opts
            .params
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if let Some(t) = opts.timeout {
        body["timeout"] = json!(humantime::format_duration(t).to_string());
    }
    let started = Instant::now();
    let submitted = client.submit(&body).await?;
    let id = submitted.execution.id.to_string();
    if opts.no_wait {
        println!("{id}");
        return Ok(QueryExit::Succeeded);
    }
    let bar = Bar::new();
    let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut execution = submitted.execution;
    while !execution.status.is_terminal() {
        bar.show(&execution, started);
        let time_up = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt.cancelled() => {
                bar.finish();
                return stop(client, &id, "interrupted", QueryExit::Interrupted).await;
            }
            _ = time_up => {
                bar.finish();
                let why = format!(
                    "timed out after {}",
                    humantime::format_duration(opts.timeout.unwrap_or_default())
                );
                return stop(client, &id, &why, QueryExit::TimedOut).await;
            }
            next = client.get(&id, 1) => execution = next?,
        }
    }
    bar.finish();
    match execution.status {
        Status::Succeeded => {
            let bytes = client.download_to(&id, opts.output.as_deref()).await?;
            if std::io::stderr().is_terminal() {
                let rows = execution
                    .result
                    .and_then(|r| r.rows)
                    .map_or(String::new(), |r| format!("{r} rows, "));
                eprintln!("{id}: {rows}{bytes} bytes in {:.1?}", started.elapsed());
            }
            Ok(QueryExit::Succeeded)
        }
        status => {
            let error = execution.error.as_ref();
            eprintln!(
                "{id} {status}: {}{}",
                error.map_or("", |e| e.code.as_str()),
                error.map_or(String::new(), |e| match e.clickhouse_code {
                    Some(c) => format!(" (ClickHouse code {c}): {}", e.message),
                    None => format!(": {}", e.message),
                })
            );
            Ok(QueryExit::Failed)
        }
    }
}

/// Cancels `id` on the server, waits briefly for it to stop, and reports `why`.
async fn stop(
    client: &Client,
    id: &str,
    why: &str,
    exit: QueryExit,
) -> Result<QueryExit, ClientError> {
    eprintln!("{id}: {why}; canceling it on the server");
    match client.cancel(id).await {
        Ok(_) => {
            // A running query is killed by its worker; wait for that, a little.
            if let Ok(e) = client.get(id, 10).await {
                eprintln!("{id}: {}", e.status);
            }
        }
        Err(ClientError::Api { status: 409, .. }) => {}
        Err(e) => eprintln!("{id}: the cancel failed: {e}"),
    }
    Ok(exit)
}

/// The progress bar on stderr, drawn only when stderr is a terminal.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar(bar)
    }

    fn show(&self, e: &ExecutionView, started: Instant) {
        let _ = started;
        let mut msg = e.status.to_string();
        if let Some(n) = e.queue_position {
            msg.push_str(&format!("  #{n} in the queue"));
        }
        if let Some(p) = e.progress.as_ref().filter(|_| e.status == Status::Running) {
            msg.push_str(&format!(
                "  {} rows, {} read",
                p.read_rows,
                human_bytes(p.read_bytes)
            ));
            if let Some(percent) = e.percent {
                msg.push_str(&format!("  {percent:.0}% of ~{} rows", p.total_rows_approx));
            }
        }
        self.0.set_message(msg);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
