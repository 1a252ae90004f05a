//! One request through the proxy: an absolute-form request forwarded (WebSocket upgrades
//! spliced), a CONNECT tunnel, or, for a host with credentials, a tunnel whose TLS the
//! proxy terminates so that it can set the header on every request inside.
//!
//! Credentials go over TLS only: a plain-HTTP request to a host that has one is refused
//! (403), not sent with the secret in clear text nor silently without it, which would
//! fail later and less clearly. The one plain-HTTP exception is a route of the proxy's
//! own (`models.aistack.internal`), which goes to aistack's gateway on loopback.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::body::{self, Body, Counted, Counts};
use crate::config::{Config, Limits};
use crate::destination::Destination;
use crate::netlog::Entry;
use crate::server::{Decided, LiveGuard, Shared, Stranger, http1_builder};
use crate::tunnel::{describe, pump};

/// What one client connection keeps between its requests.
#[derive(Default)]
pub(crate) struct Client {
    /// The upstream connection of the previous request, reused for the next to the same
    /// destination and address (keep-alive).
    upstream: Mutex<Option<Upstream>>,
    /// Inside an intercepted tunnel: the connection dialled for CONNECT, until its first use.
    dialled: Mutex<Option<(TcpStream, IpAddr)>>,
}

struct Upstream {
    destination: Destination,
    port: u16,
    address: IpAddr,
    sender: SendRequest<Body>,
}

/// Where requests go: the destination, the addresses the policy allowed, and whether the
/// upstream speaks TLS (inside an intercepted tunnel).
struct Target {
    destination: Destination,
    port: u16,
    addresses: Vec<IpAddr>,
    tls: Option<ServerName<'static>>,
    /// Set on every request, replacing the client's (a route's headers).
    headers: Vec<(HeaderName, HeaderValue)>,
    /// One of the proxy's own routes, whose credential goes over plain HTTP to loopback.
    routed: bool,
}

/// Answers one request from a client of the listener.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    client: &Client,
    request: Request<Incoming>,
) -> Response<Body> {
    if let Some(response) = oversized(&shared.settings.limits, &request) {
        return response;
    }
    if request.method() == Method::CONNECT {
        return connect(shared, request).await;
    }
    if request.uri().scheme().is_none() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "This is the aistack network-policy proxy: requests must name their destination \
             (`GET http://host/path`) or use CONNECT",
            "Set `HTTP_PROXY` and `HTTPS_PROXY` to this address instead of calling it",
        );
    }
    forward(shared, client, request).await
}

/// A 431 for a head longer than [`Limits::max_head_bytes`]. hyper's read buffer bounds a
/// head only loosely: it gives up once the buffer holds that many bytes and no whole head,
/// but one read can bring in a whole head of up to twice as many.
fn oversized(limits: &Limits, request: &Request<Incoming>) -> Option<Response<Body>> {
    let max = limits.head_bytes();
    // The request line (`METHOD target HTTP/1.1\r\n`), each `name: value\r\n`, and the blank line.
    let line = request.method().as_str().len() + request.uri().to_string().len() + 12;
    let headers: usize = (request.headers().iter())
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (line + headers + 2 > max).then(|| {
        refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("The request head is longer than {max} bytes"),
            "Send fewer or shorter headers",
        )
    })
}

async fn forward(
    shared: &Arc<Shared>,
    client: &Client,
    request: Request<Incoming>,
) -> Response<Body> {
    let config = shared.config();
    let uri = request.uri().to_string();
    if uri.len() > shared.settings.limits.max_uri_bytes {
        return refuse(
            StatusCode::URI_TOO_LONG,
            &format!(
                "The request target is longer than {} bytes",
                shared.settings.limits.max_uri_bytes
            ),
            "Send a shorter URL",
        );
    }
    let (destination, port) = match Destination::parse_uri(&uri) {
        Ok(parsed) => parsed,
        Err(error) => {
            return invalid(
                shared,
                &config,
                request.method().as_str(),
                &uri,
                &error.reason,
            );
        }
    };
    if request.uri().scheme_str() == Some("https") {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!("`{uri}` is an https URL sent as a plain request"),
            "Clients send https through CONNECT: set `HTTPS_PROXY`, not only `HTTP_PROXY`",
        );
    }
    let mut entry = shared.entry(&config, request.method().as_str(), &destination, port);
    let target = match config.route(&destination) {
        Some(route) => {
            entry.rule = format!("route {}", route.host);
            entry.decision = crate::netlog::ALLOW.to_owned();
            Target {
                destination,
                port: route.address.port(),
                addresses: vec![route.address.ip()],
                tls: None,
                routed: true,
                headers: (route.headers.iter())
                    .filter_map(|(name, value)| {
                        Some((
                            HeaderName::from_bytes(name.as_bytes()).ok()?,
                            HeaderValue::from_str(value).ok()?,
                        ))
                    })
                    .collect(),
            }
        }
        None if config.intercepts(&destination, port) => {
            entry.rule = "credentials go over https only".to_owned();
            let response = refuse(
                StatusCode::FORBIDDEN,
                &format!(
                    "The proxy adds the credential for `{destination}` over https only, not to a plain-HTTP request"
                ),
                &format!(
                    "Use `https://{}/`: the proxy adds the credential inside TLS",
                    authority(&destination, port, 443)
                ),
            );
            return logged(shared, &mut entry, response);
        }
        None => match decided(shared, &config, &destination, port, &mut entry).await {
            Ok(addresses) => Target {
                destination,
                port,
                addresses,
                tls: None,
                headers: Vec::new(),
                routed: false,
            },
            Err(response) => return response,
        },
    };
    send(shared, client, &config, &target, request, entry).await
}

/// Decides, and for anything but an allowed request logs it and builds the answer.
async fn decided(
    shared: &Arc<Shared>,
    config: &Config,
    destination: &Destination,
    port: u16,
    entry: &mut Entry,
) -> Result<Vec<IpAddr>, Response<Body>> {
    match shared.decide(config, destination, port).await {
        Decided::Allowed { rule, addresses } => {
            entry.rule = rule;
            entry.decision = crate::netlog::ALLOW.to_owned();
            Ok(addresses)
        }
        Decided::Denied { rule } => {
            let help = if rule.starts_with("aistack listener") {
                let own = "aistack's own listeners (gateways, proxies, published ports) are never reachable through a proxy";
                match config.routes.first() {
                    Some(route) => format!("Reach models at `http://{}/`; {own}", route.host),
                    None => format!("List models in the sandbox's `models:`; {own}"),
                }
            } else if rule.starts_with("block list") {
                format!(
                    "Only an IP or CIDR rule inside that range in `network_policies.{}.allow` reaches this address",
                    config.source
                )
            } else {
                format!(
                    "Allow it in `network_policies.{}` if the agent needs it",
                    config.source
                )
            };
            let response = refuse(
                StatusCode::FORBIDDEN,
                &format!(
                    "Network policy `{}` denies `{destination}:{port}`: {rule}",
                    config.source
                ),
                &help,
            );
            entry.rule = rule;
            Err(logged(shared, entry, response))
        }
        Decided::Unresolved { error } => {
            let response = refuse(
                StatusCode::BAD_GATEWAY,
                &format!("Cannot resolve `{destination}`"),
                "Check the host name",
            );
            entry.rule = "no address".to_owned();
            entry.error = Some(error);
            Err(logged(shared, entry, response))
        }
    }
}

fn logged(shared: &Shared, entry: &mut Entry, response: Response<Body>) -> Response<Body> {
    let mut entry = entry.clone();
    entry.status = response.status().as_u16();
    shared.log().record(entry);
    response
}

fn invalid(
    shared: &Shared,
    config: &Config,
    method: &str,
    target: &str,
    reason: &str,
) -> Response<Body> {
    let mut entry = shared.entry(config, method, &Destination::Name(String::new()), 0);
    entry.host = target.to_owned();
    entry.rule = format!("invalid destination: {reason}");
    let response = refuse(
        StatusCode::BAD_REQUEST,
        &format!("Invalid destination `{target}`: {reason}"),
        "Name the destination as `host:port` (CONNECT) or an absolute http URL",
    );
    logged(shared, &mut entry, response)
}

/// Sends `request` upstream over the connection kept from the previous request when it
/// goes to the same place, else a new one to a checked address.
async fn send(
    shared: &Arc<Shared>,
    client: &Client,
    config: &Config,
    target: &Target,
    mut request: Request<Incoming>,
    mut entry: Entry,
) -> Response<Body> {
    // Never in clear text: inside an intercepted tunnel, or on a route of the proxy's own.
    let credential = if target.tls.is_some() || target.routed {
        credential(config, &target.destination, &shared.settings.secrets)
    } else {
        Ok(None)
    };
    let credential = match credential {
        Ok(credential) => credential,
        Err((message, help)) => {
            entry.error = Some(message.clone());
            let response = refuse(StatusCode::BAD_GATEWAY, &message, &help);
            return logged(shared, &mut entry, response);
        }
    };
    let upgrade = is_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let counts = Arc::new(Counts::default());
    let outgoing = outgoing(request, target, credential, upgrade, &counts);
    let mut upstream = match upstream(shared, client, target, !upgrade).await {
        Ok(upstream) => upstream,
        Err(error) => {
            entry.error = Some(error.clone());
            let response = refuse(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "Cannot reach `{}:{}`: {error}",
                    target.destination, target.port
                ),
                "Check that the upstream is running",
            );
            return logged(shared, &mut entry, response);
        }
    };
    entry.address = Some(upstream.address);
    let response = match upstream.sender.send_request(outgoing).await {
        Ok(response) => response,
        Err(error) => {
            entry.error = Some(body::describe(&error));
            let response = refuse(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "The upstream `{}:{}` failed: {}",
                    target.destination,
                    target.port,
                    body::describe(&error)
                ),
                "Try again; the upstream closed the connection",
            );
            return logged(shared, &mut entry, response);
        }
    };
    entry.status = response.status().as_u16();
    if let Some(client_upgrade) = client_upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        return splice(
            shared,
            target,
            upstream.address,
            client_upgrade,
            response,
            entry,
        );
    }
    if !upgrade {
        *client.upstream.lock().await = Some(upstream);
    }
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let body = Counted::down(incoming, counts, shared.log().clone(), entry);
    Response::from_parts(parts, body)
}

/// The upstream connection for `target`: the kept one if it is still open and goes to an
/// address this request's decision allowed, else a new one.
async fn upstream(
    shared: &Arc<Shared>,
    client: &Client,
    target: &Target,
    reuse: bool,
) -> Result<Upstream, String> {
    if let Some(mut kept) = client.upstream.lock().await.take()
        && reuse
        && kept.destination == target.destination
        && kept.port == target.port
        && target.addresses.contains(&kept.address)
        && kept.sender.ready().await.is_ok()
    {
        return Ok(kept);
    }
    let dialled = client.dialled.lock().await.take();
    let (stream, address) = match dialled {
        Some(dialled) => dialled,
        None => (shared.dial(&target.addresses, target.port).await).map_err(|e| describe(&e))?,
    };
    let sender = match &target.tls {
        None => handshake(shared, target, address, stream).await?,
        Some(name) => {
            let connector = TlsConnector::from(Arc::clone(&shared.settings.upstream_tls));
            let tls = (connector.connect(name.clone(), stream).await)
                .map_err(|e| format!("TLS with the upstream failed: {e}"))?;
            handshake(shared, target, address, tls).await?
        }
    };
    Ok(Upstream {
        destination: target.destination.clone(),
        port: target.port,
        address,
        sender,
    })
}

async fn handshake<T>(
    shared: &Arc<Shared>,
    target: &Target,
    address: IpAddr,
    io: T,
) -> Result<SendRequest<Body>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| body::describe(&e))?;
    let live = shared.register(&target.destination, target.port, address);
    tokio::spawn(async move {
        tokio::select! {
            _ = connection.with_upgrades() => {}
            () = live.cancel.cancelled() => {}
        }
    });
    Ok(sender)
}

/// The header to set for `destination`, read now; an unset variable refuses the request
/// rather than sending it without. The error is the refusal's message and help.
fn credential(
    config: &Config,
    destination: &Destination,
    secrets: &crate::server::Secrets,
) -> Result<Option<(HeaderName, HeaderValue)>, (String, String)> {
    let Some(credential) = config.credential(destination) else {
        return Ok(None);
    };
    let refusal = |message: String| {
        let help = format!(
            "Set `{}` in the environment of `aistack up` and run it again",
            credential.from_env
        );
        (message, help)
    };
    let name = HeaderName::from_bytes(credential.header.as_bytes()).map_err(|_| {
        refusal(format!(
            "The credential header `{}` is not a valid header name",
            credential.header
        ))
    })?;
    let value = secrets(&credential.from_env).ok_or_else(|| {
        refusal(format!(
            "The credential for `{destination}` is not available: `{}` is not set",
            credential.from_env
        ))
    })?;
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        refusal(format!(
            "The value of `{}` is not a valid header value",
            credential.from_env
        ))
    })?;
    value.set_sensitive(true);
    Ok(Some((name, value)))
}

/// The request as the upstream gets it: origin-form, `Host` naming the destination the
/// policy decided on (whatever `Host` the client sent), no hop-by-hop headers, and the
/// credential replacing any value the client set.
fn outgoing(
    request: Request<Incoming>,
    target: &Target,
    credential: Option<(HeaderName, HeaderValue)>,
    upgrade: bool,
    counts: &Arc<Counts>,
) -> Request<Body> {
    let (mut parts, incoming) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = path
        .parse()
        .unwrap_or_else(|_| hyper::Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let default_port = if target.tls.is_some() { 443 } else { 80 };
    let host = if target.port == default_port {
        target.destination.to_string()
    } else {
        format!("{}:{}", target.destination, target.port)
    };
    if let Ok(host) = HeaderValue::from_str(&host) {
        parts.headers.insert(header::HOST, host);
    }
    for (name, value) in &target.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    if let Some((name, value)) = credential {
        parts.headers.insert(name, value);
    }
    Request::from_parts(parts, Counted::up(incoming, Arc::clone(counts)))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && (headers.get_all(header::CONNECTION).iter())
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes the headers that describe one hop (RFC 9110 §7.6.1), and those the `Connection`
/// header names; an upgrade keeps `Upgrade` and says so in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = (headers.get_all(header::CONNECTION).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    headers.remove("proxy-connection");
    headers.remove("keep-alive");
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Passes a 101 answer to the client, then joins the two upgraded connections.
fn splice(
    shared: &Arc<Shared>,
    target: &Target,
    address: IpAddr,
    client_upgrade: hyper::upgrade::OnUpgrade,
    mut response: Response<Incoming>,
    mut entry: Entry,
) -> Response<Body> {
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let live = shared.register(&target.destination, target.port, address);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let idle = shared.settings.limits.idle_timeout;
                let pumped = pump(
                    TokioIo::new(client),
                    TokioIo::new(upstream),
                    idle,
                    &live.cancel,
                )
                .await;
                entry.bytes_up = pumped.up;
                entry.bytes_down = pumped.down;
                entry.error = pumped.error;
            }
            Err(error) => entry.error = Some(body::describe(&error)),
        }
        shared.log().record(entry);
    });
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::TRANSFER_ENCODING);
    Response::from_parts(parts, body::empty())
}

async fn connect(shared: &Arc<Shared>, mut request: Request<Incoming>) -> Response<Body> {
    let config = shared.config();
    let Some(authority) = request.uri().authority().map(|a| a.as_str().to_owned()) else {
        return invalid(
            shared,
            &config,
            "CONNECT",
            &request.uri().to_string(),
            "CONNECT needs `host:port`",
        );
    };
    if authority.contains('@') {
        return invalid(
            shared,
            &config,
            "CONNECT",
            &authority,
            "a CONNECT target has no userinfo",
        );
    }
    let (destination, port) = match Destination::parse_authority(&authority, None) {
        Ok(parsed) => parsed,
        Err(error) => return invalid(shared, &config, "CONNECT", &authority, &error.reason),
    };
    if port == 80 && config.route(&destination).is_some() {
        return routed_tunnel(shared, request, destination);
    }
    let mut entry = shared.entry(&config, "CONNECT", &destination, port);
    if config.route(&destination).is_some() {
        entry.rule = format!("route {destination} takes plain http only");
        let response = refuse(
            StatusCode::BAD_REQUEST,
            &format!("`{destination}` is served over plain http only"),
            &format!("Use `http://{destination}/`"),
        );
        return logged(shared, &mut entry, response);
    }
    let addresses = match decided(shared, &config, &destination, port, &mut entry).await {
        Ok(addresses) => addresses,
        Err(response) => return response,
    };
    let (stream, address) = match shared.dial(&addresses, port).await {
        Ok(dialled) => dialled,
        Err(error) => {
            entry.error = Some(describe(&error));
            let response = refuse(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "Cannot connect to `{destination}:{port}`: {}",
                    describe(&error)
                ),
                "Check that the upstream is running",
            );
            return logged(shared, &mut entry, response);
        }
    };
    entry.address = Some(address);
    entry.status = StatusCode::OK.as_u16();
    let on_upgrade = hyper::upgrade::on(&mut request);
    // Registered before the client hears 200, so a policy change from then on covers it.
    let live = shared.register(&destination, port, address);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(error) => {
                entry.error = Some(body::describe(&error));
                shared.log().record(entry);
                return;
            }
        };
        let target = Target {
            tls: None,
            destination,
            port,
            addresses: vec![address],
            headers: Vec::new(),
            routed: false,
        };
        if config.intercepts(&target.destination, port) {
            intercept(
                &shared,
                config,
                target,
                (stream, address),
                upgraded,
                entry,
                live,
            )
            .await;
        } else {
            let idle = shared.settings.limits.idle_timeout;
            let pumped = pump(upgraded, stream, idle, &live.cancel).await;
            entry.bytes_up = pumped.up;
            entry.bytes_down = pumped.down;
            entry.error = pumped.error;
            shared.log().record(entry);
        }
    });
    Response::new(body::empty())
}

/// A CONNECT to a route's plain-http port, as clients send every proxied request whose
/// `fetch` tunnels plain http too (Bun's: Claude Code's native build): the requests inside
/// are served as forwarded ones to that route, and logged each as such. They go nowhere
/// else, whatever their target says.
fn routed_tunnel(
    shared: &Arc<Shared>,
    mut request: Request<Incoming>,
    destination: Destination,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut request);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let client = Arc::new(Client::default());
        let service = {
            let shared = Arc::clone(&shared);
            service_fn(move |mut request: Request<Incoming>| {
                let shared = Arc::clone(&shared);
                let client = Arc::clone(&client);
                let destination = destination.clone();
                async move {
                    if let Some(response) = oversized(&shared.settings.limits, &request) {
                        return Ok(response);
                    }
                    let path = (request.uri().path_and_query()).map_or("/", |p| p.as_str());
                    let Ok(uri) = format!("http://{destination}{path}").parse() else {
                        let response = refuse(
                            StatusCode::BAD_REQUEST,
                            "The request target is not a path",
                            "Send `METHOD /path HTTP/1.1` inside the tunnel",
                        );
                        return Ok(response);
                    };
                    *request.uri_mut() = uri;
                    let response = forward(&shared, &client, request).await;
                    Ok::<_, std::convert::Infallible>(response)
                }
            })
        };
        let _ = http1_builder(&shared.settings.limits)
            .serve_connection(upgraded, service)
            .with_upgrades()
            .await;
    });
    Response::new(body::empty())
}

/// Terminates the client's TLS with a certificate the project's CA signs for the host,
/// then serves the requests inside as forwarded ones, with the credential set on each.
async fn intercept(
    shared: &Arc<Shared>,
    config: Arc<crate::config::Config>,
    mut target: Target,
    dialled: (TcpStream, IpAddr),
    upgraded: TokioIo<hyper::upgrade::Upgraded>,
    mut entry: Entry,
    live: LiveGuard,
) {
    entry.intercepted = true;
    let name = match &target.destination {
        Destination::Ip(ip) => ip.to_string(),
        Destination::Name(name) => name.clone(),
    };
    let server_name = ServerName::try_from(name.clone()).map_err(|e| e.to_string());
    let tls_config = shared
        .settings
        .authority
        .server_config(&name)
        .map_err(|e| e.to_string());
    let (server_name, tls_config) = match (server_name, tls_config) {
        (Ok(server_name), Ok(tls_config)) => (server_name, tls_config),
        (Err(error), _) | (_, Err(error)) => {
            entry.error = Some(error);
            shared.log().record(entry);
            return;
        }
    };
    target.tls = Some(server_name);
    let handshake = tokio::time::timeout(
        shared.settings.limits.header_timeout,
        TlsAcceptor::from(tls_config).accept(upgraded),
    );
    let tls = tokio::select! {
        accepted = handshake => match accepted {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                entry.error = Some(format!("TLS handshake with the client failed: {error}"));
                shared.log().record(entry);
                return;
            }
            Err(_) => {
                entry.error = Some("TLS handshake with the client timed out".to_owned());
                shared.log().record(entry);
                return;
            }
        },
        () = live.cancel.cancelled() => return,
    };
    shared.log().record(entry.clone());
    let client = Arc::new(Client {
        upstream: Mutex::new(None),
        dialled: Mutex::new(Some(dialled)),
    });
    let target = Arc::new(target);
    let service = {
        let shared = Arc::clone(shared);
        service_fn(move |request: Request<Incoming>| {
            let shared = Arc::clone(&shared);
            let client = Arc::clone(&client);
            let config = Arc::clone(&config);
            let target = Arc::clone(&target);
            let mut entry = entry.clone();
            async move {
                if let Some(response) = oversized(&shared.settings.limits, &request) {
                    return Ok(response);
                }
                entry.method = request.method().to_string();
                entry.time = Entry::now_time();
                entry.status = 0;
                let response = send(&shared, &client, &config, &target, request, entry).await;
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let connection = http1_builder(&shared.settings.limits)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::select! {
        _ = connection => {}
        () = live.cancel.cancelled() => {}
    }
}

/// The answer to every request of a TCP client that runs as another user than the proxy:
/// the listener would add the policy's credentials for anyone on this machine.
pub(crate) fn stranger(
    shared: &Shared,
    request: &Request<Incoming>,
    stranger: &Stranger,
) -> Response<Body> {
    let config = shared.config();
    let target = match request.method() {
        &Method::CONNECT => request.uri().authority().map(|a| a.to_string()),
        _ => request.uri().host().map(str::to_owned),
    };
    let mut entry = shared.entry(
        &config,
        request.method().as_str(),
        &Destination::Name(String::new()),
        request.uri().port_u16().unwrap_or(0),
    );
    entry.host = target.unwrap_or_default();
    let me = rustix::process::geteuid().as_raw();
    let (message, rule) = match stranger {
        Stranger::Uid(uid) => (
            format!(
                "The proxy of `{}` serves only uid {me}, the user aistack runs as; this client runs as uid {uid}",
                config.source
            ),
            format!("client uid {uid}"),
        ),
        Stranger::Unknown(error) => (
            format!(
                "The proxy of `{}` serves only uid {me}, and cannot tell whose this client is: {error}",
                config.source
            ),
            "client unknown".to_owned(),
        ),
    };
    entry.rule = rule;
    let response = refuse(
        StatusCode::FORBIDDEN,
        &message,
        &format!("Run the client as uid {me} (the user of `aistack up`), or in a sandbox"),
    );
    logged(shared, &mut entry, response)
}

/// `host:port` as a URL names it, the port left out when it is `default`.
fn authority(destination: &Destination, port: u16, default: u16) -> String {
    if port == default {
        destination.to_string()
    } else {
        format!("{destination}:{port}")
    }
}

/// An answer the proxy writes itself: the message, and the fix on a `help:` line.
fn refuse(status: StatusCode, message: &str, help: &str) -> Response<Body> {
    let mut response = Response::new(body::text(format!("{message}\nhelp: {help}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
