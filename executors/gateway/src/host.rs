//! The host name a request is addressed to, checked against DNS rebinding.
//!
//! A web page on `evil.example` can re-point its own name at 127.0.0.1 once it is loaded;
//! the browser then sends the page's requests to the gateway as same-origin requests, which
//! CORS never stops, and a gateway without a key trusts every loopback client. What the
//! page cannot change is the `Host` those requests carry: its own name. So a gateway
//! without an API key answers only requests addressed to `localhost` or to an IP address
//! (a literal is resolved by nobody, so no page can rebind it), as Ollama's host check
//! does. With a key, the key is what such a page lacks, and any name is served to a client
//! that sends it.
//!
//! Requests through a sandbox's proxy are addressed to `models.aistack.internal` and carry
//! the sandbox's scope ([`crate::scope`]); that name is allowed with the scope only. A
//! browser cannot send the scope header without a CORS preflight, and the preflight
//! carries no scope, so it is refused here.
//!
//! A request without any `Host` (HTTP/1.0) is served: browsers always send one, and
//! rebinding needs a browser.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::extract::Request;
use axum::http::{StatusCode, header};

use crate::error::ApiError;
use crate::scope::Scope;

/// The name sandboxes reach their models at; the proxy routes it to the gateway
/// (`aistack_planner::MODELS_HOST`, which the daemon checks is the same).
pub const MODELS_HOST: &str = "models.aistack.internal";

/// Why a request without a key may not be served, if it names a host other than this
/// machine's loopback name, an IP address, or (with a scope) the sandboxes' name for it.
/// `listen` is the gateway's address, for the fix.
pub(crate) fn refusal(request: &Request, listen: SocketAddr) -> Option<ApiError> {
    let scoped = Scope::of(request).is_some();
    let header_hosts = request
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(|value| value.to_str().ok());
    // An absolute-form request (and HTTP/2's `:authority`) names the host in the target,
    // which then wins over `Host`: both must pass.
    let target_host = request.uri().authority().map(|a| Some(a.as_str()));
    let refused = header_hosts
        .chain(target_host)
        .find(|host| !host.is_some_and(|h| allowed(h, scoped)))?;
    let shown = refused.map_or_else(|| "(not text)".to_owned(), |h| format!("`{h}`"));
    // A wildcard listener is called at its loopback address.
    let mut reach = listen;
    if reach.ip().is_unspecified() {
        reach.set_ip(match reach.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "Host {shown} is refused: without an API key this gateway answers only requests to `localhost` or an IP address, which web pages cannot rebind; help: call it at `http://{reach}`, or set `gateway.api_key_env` in aistack.yaml to serve any host name to clients that send the key"
        ),
    ))
}

/// Whether a `Host` value (`name[:port]`, `[v6][:port]`) may reach a gateway without a key.
/// The port is not checked: it is not what a rebinding page controls.
fn allowed(host: &str, scoped: bool) -> bool {
    let Some(name) = name_of(host) else {
        return false;
    };
    if name.starts_with('[') {
        return name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<Ipv6Addr>().is_ok());
    }
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    // A trailing dot names the same host; browsers keep it in `Host`.
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost") || (scoped && name.eq_ignore_ascii_case(MODELS_HOST))
}

/// The host part of `name[:port]` or `[v6][:port]`; `None` for a malformed value.
fn name_of(host: &str) -> Option<&str> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')? + 1;
        let rest = &host[end..];
        (
            &host[..end],
            rest.strip_prefix(':').or(rest.is_empty().then_some("")),
        )
    } else if host.matches(':').count() > 1 {
        // An IPv6 address without its brackets.
        return None;
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, Some("")),
        }
    };
    let port = port?;
    let port_ok = port.is_empty() || port.parse::<u16>().is_ok();
    (port_ok && !name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[test]
    fn loopback_names_and_ip_literals_are_allowed() {
        for host in [
            "localhost",
            "localhost:12434",
            "LOCALHOST.:12434",
            "127.0.0.1",
            "127.0.0.1:12434",
            "[::1]",
            "[::1]:12434",
            "192.168.1.20:12434",
            "0.0.0.0:12434",
            "[fe80::1]:80",
        ] {
            assert!(allowed(host, false), "{host}");
        }
    }

    #[test]
    fn other_names_are_refused() {
        for host in [
            "evil.example",
            "evil.example:12434",
            "localhost.evil.example",
            "evil.localhost",
            "127.0.0.1.nip.io:12434",
            "models.aistack.internal",
            "",
            ":12434",
            "localhost:port",
            "localhost:99999",
            "[::1",
            "[::1]x",
            "[localhost]",
            "::1",
        ] {
            assert!(!allowed(host, false), "{host}");
        }
    }

    #[test]
    fn the_sandboxes_name_needs_their_scope() {
        assert!(allowed("models.aistack.internal:12434", true));
        assert!(allowed("models.aistack.internal", true));
        assert!(!allowed("models.aistack.internal:12434", false));
        assert!(!allowed("evil.example", true));
    }

    fn request(builder: axum::http::request::Builder) -> Request {
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn every_host_a_request_names_is_checked() {
        let listen: SocketAddr = "127.0.0.1:12434".parse().unwrap();
        let plain = request(Request::builder().uri("/v1/models"));
        assert!(refusal(&plain, listen).is_none(), "no Host: HTTP/1.0");
        let good = request(Request::builder().uri("/").header("host", "localhost:1"));
        assert!(refusal(&good, listen).is_none());
        let bad = request(Request::builder().uri("/").header("host", "evil.example"));
        let e = refusal(&bad, listen).unwrap();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(e.message.contains("`evil.example`"), "{}", e.message);
        assert!(
            e.message
                .contains("help: call it at `http://127.0.0.1:12434`")
        );
        let absolute = request(
            Request::builder()
                .uri("http://evil.example/v1/models")
                .header("host", "127.0.0.1"),
        );
        assert!(
            refusal(&absolute, listen).is_some(),
            "the target's host too"
        );
        let scoped = request(
            Request::builder()
                .uri("/v1/models")
                .header("host", "models.aistack.internal:12434")
                .header(crate::scope::HEADER, "chat"),
        );
        assert!(refusal(&scoped, listen).is_none());
        let not_text = request(Request::builder().uri("/").header(
            "host",
            axum::http::HeaderValue::from_bytes(b"\xffx").unwrap(),
        ));
        assert!(refusal(&not_text, listen).is_some());
        let wildcard: SocketAddr = "0.0.0.0:80".parse().unwrap();
        let e = refusal(&bad, wildcard).unwrap();
        assert!(e.message.contains("`http://127.0.0.1:80`"), "{}", e.message);
    }
}
