//! The SSRF corpus (issues 5 and 16): request targets that try to reach this machine,
//! aistack's own listeners, private networks or cloud metadata through a policy, each with
//! the verdict and the reason the network log will show. Resolution is a stub that
//! answers from the table and counts its calls, and the machine's own addresses are a stub
//! too ([`own`]); nothing here opens a socket.

use std::cell::Cell;
use std::net::IpAddr;

use aistack_proxy::policy::Reason;
use aistack_proxy::{Decision, Destination, OwnListeners, Policy};
use aistack_spec::model::NetworkPolicy;
use aistack_spec::values::{HostRule, PolicyDefault};

struct Case {
    /// The policy: `default`, allow rules, deny rules.
    policy: (
        PolicyDefault,
        &'static [&'static str],
        &'static [&'static str],
    ),
    /// An absolute URI (a forward-proxy request line) or a CONNECT authority.
    target: &'static str,
    /// What the stub resolver answers for a name.
    dns: &'static [&'static str],
    /// `Some(decision, reason prefix)`, or `None` when the target must not even parse.
    expect: Option<(Decision, &'static str)>,
}

const OPEN: (PolicyDefault, &[&str], &[&str]) = (PolicyDefault::Allow, &[], &[]);
const ALLOWED_COM: (PolicyDefault, &[&str], &[&str]) = (
    PolicyDefault::Deny,
    &["allowed.com", "*.example.com"],
    &["evil.example.com"],
);

/// Everything allowed, loopback and private networks included, by wide rules: they lift
/// nothing of the block list.
const WIDE: (PolicyDefault, &[&str], &[&str]) = (
    PolicyDefault::Deny,
    &[
        "0.0.0.0/0",
        "::/0",
        "0.0.0.0/1",
        "64.0.0.0/2",
        "192.168.0.0/15",
        "fc00::/6",
    ],
    &[],
);
/// Loopback and the private ranges, each named as its blocked range or inside it.
const LOCAL: (PolicyDefault, &[&str], &[&str]) = (
    PolicyDefault::Deny,
    &[
        "127.0.0.0/8",
        "::1",
        "0.0.0.0/8",
        "10.0.0.0/8",
        "192.168.0.0/24",
        "fd00::/8",
        "local.test",
    ],
    &[],
);

const DENY: Decision = Decision::Deny;
const ALLOW: Decision = Decision::Allow;

macro_rules! case {
    ($policy:expr, $target:expr, [$($dns:expr),*], $decision:expr, $reason:expr) => {
        Case { policy: $policy, target: $target, dns: &[$($dns),*], expect: Some(($decision, $reason)) }
    };
    ($policy:expr, $target:expr, invalid) => {
        Case { policy: $policy, target: $target, dns: &[], expect: None }
    };
}

const CORPUS: &[Case] = &[
    // Loopback, spelled every way a URL parser accepts, under a policy that allows all.
    case!(
        OPEN,
        "http://127.0.0.1/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://2130706433/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://0x7f000001/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://0177.0.0.1/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://0x7f.0.0.1/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(OPEN, "http://127.1/", [], DENY, "block list 127.0.0.0/8"),
    case!(OPEN, "http://127.0.1/", [], DENY, "block list 127.0.0.0/8"),
    case!(
        OPEN,
        "http://127.0.0.1./",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://%31%32%37.0.0.1/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://１２７．０．０．１/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://017700000001/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://127.255.255.254:8080/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(OPEN, "HTTP://0X7F.1/", [], DENY, "block list 127.0.0.0/8"),
    // IPv6 loopback, unspecified, and IPv4 inside IPv6.
    case!(OPEN, "http://[::1]/", [], DENY, "block list ::1/128"),
    case!(
        OPEN,
        "http://[0:0:0:0:0:0:0:1]/",
        [],
        DENY,
        "block list ::1/128"
    ),
    case!(OPEN, "http://[::]/", [], DENY, "block list ::/128"),
    case!(
        OPEN,
        "http://[::ffff:127.0.0.1]/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://[::ffff:7f00:1]/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://[::127.0.0.1]/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://[0:0:0:0:0:ffff:7f00:0001]/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    // Private networks.
    case!(OPEN, "http://10.0.0.1/", [], DENY, "block list 10.0.0.0/8"),
    case!(OPEN, "http://0xa.0.0.1/", [], DENY, "block list 10.0.0.0/8"),
    case!(OPEN, "http://167772161/", [], DENY, "block list 10.0.0.0/8"),
    case!(
        OPEN,
        "http://172.16.0.1/",
        [],
        DENY,
        "block list 172.16.0.0/12"
    ),
    case!(
        OPEN,
        "http://172.31.255.255/",
        [],
        DENY,
        "block list 172.16.0.0/12"
    ),
    case!(
        OPEN,
        "http://192.168.1.1/",
        [],
        DENY,
        "block list 192.168.0.0/16"
    ),
    case!(
        OPEN,
        "http://[::ffff:192.168.1.1]/",
        [],
        DENY,
        "block list 192.168.0.0/16"
    ),
    case!(OPEN, "http://0.0.0.0/", [], DENY, "block list 0.0.0.0/8"),
    case!(OPEN, "http://0/", [], DENY, "block list 0.0.0.0/8"),
    // Link-local and the cloud metadata address.
    case!(
        OPEN,
        "http://169.254.169.254/latest/meta-data/",
        [],
        DENY,
        "block list 169.254.0.0/16"
    ),
    case!(
        OPEN,
        "http://2852039166/",
        [],
        DENY,
        "block list 169.254.0.0/16"
    ),
    case!(
        OPEN,
        "http://0xa9fea9fe/",
        [],
        DENY,
        "block list 169.254.0.0/16"
    ),
    case!(
        OPEN,
        "http://[::ffff:169.254.169.254]/",
        [],
        DENY,
        "block list 169.254.0.0/16"
    ),
    case!(OPEN, "http://[fe80::1]/", [], DENY, "block list fe80::/10"),
    // Carrier-grade NAT and unique-local IPv6.
    case!(
        OPEN,
        "http://100.64.0.1/",
        [],
        DENY,
        "block list 100.64.0.0/10"
    ),
    case!(
        OPEN,
        "http://100.127.255.254/",
        [],
        DENY,
        "block list 100.64.0.0/10"
    ),
    case!(OPEN, "http://[fc00::1]/", [], DENY, "block list fc00::/7"),
    case!(
        OPEN,
        "http://[fd12:3456::1]/",
        [],
        DENY,
        "block list fc00::/7"
    ),
    // Userinfo and fragment tricks: the host is what follows the last `@`.
    case!(
        ALLOWED_COM,
        "http://allowed.com@127.0.0.1/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        ALLOWED_COM,
        "http://allowed.com:80@127.0.0.1:8080/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        ALLOWED_COM,
        "http://127.0.0.1#@allowed.com/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        ALLOWED_COM,
        "http://127.0.0.1?@allowed.com/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    // Names that resolve into blocked ranges: a host rule never opens the block list.
    case!(
        OPEN,
        "http://localhost/",
        ["127.0.0.1"],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        ALLOWED_COM,
        "http://allowed.com/",
        ["127.0.0.1"],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://rebind.test/",
        ["93.184.216.34", "127.0.0.1"],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://six.test/",
        ["::1"],
        DENY,
        "block list ::1/128"
    ),
    case!(
        OPEN,
        "http://mapped.test/",
        ["::ffff:10.0.0.1"],
        DENY,
        "block list 10.0.0.0/8"
    ),
    case!(
        OPEN,
        "http://metadata.test/",
        ["169.254.169.254"],
        DENY,
        "block list 169.254.0.0/16"
    ),
    case!(
        ALLOWED_COM,
        "http://api.example.com/",
        ["192.168.0.10"],
        DENY,
        "block list 192.168.0.0/16"
    ),
    case!(OPEN, "http://nowhere.test/", [], DENY, "no address"),
    // CONNECT to blocked addresses and ports.
    case!(OPEN, "127.0.0.1:22", [], DENY, "block list 127.0.0.0/8"),
    case!(OPEN, "[::1]:443", [], DENY, "block list ::1/128"),
    case!(OPEN, "10.0.0.1:443", [], DENY, "block list 10.0.0.0/8"),
    case!(OPEN, "2130706433:443", [], DENY, "block list 127.0.0.0/8"),
    case!(
        (PolicyDefault::Deny, &["api.example.com:443"], &[]),
        "api.example.com:22",
        ["93.184.216.34"],
        DENY,
        "default deny"
    ),
    case!(
        (PolicyDefault::Deny, &["10.1.2.3:22"], &[]),
        "10.1.2.3:80",
        [],
        DENY,
        "block list 10.0.0.0/8"
    ),
    // Deny beats allow, names are matched in canonical form, wildcards are strict.
    case!(
        ALLOWED_COM,
        "http://evil.example.com/",
        ["93.184.216.34"],
        DENY,
        "deny evil.example.com"
    ),
    case!(
        ALLOWED_COM,
        "http://EVIL.Example.COM./",
        ["93.184.216.34"],
        DENY,
        "deny evil.example.com"
    ),
    case!(
        ALLOWED_COM,
        "evil.example.com:443",
        ["93.184.216.34"],
        DENY,
        "deny evil.example.com"
    ),
    case!(
        ALLOWED_COM,
        "http://example.com/",
        ["93.184.216.34"],
        DENY,
        "default deny"
    ),
    case!(
        ALLOWED_COM,
        "http://badexample.com/",
        ["93.184.216.34"],
        DENY,
        "default deny"
    ),
    case!(
        ALLOWED_COM,
        "http://allowed.com.evil.net/",
        ["93.184.216.34"],
        DENY,
        "default deny"
    ),
    case!(
        (PolicyDefault::Allow, &["127.0.0.0/8"], &["127.0.0.5"]),
        "http://127.0.0.5/",
        [],
        DENY,
        "deny 127.0.0.5"
    ),
    case!(
        (PolicyDefault::Allow, &[], &["203.0.113.0/24"]),
        "http://cdn.test/",
        ["203.0.113.7"],
        DENY,
        "deny 203.0.113.0/24"
    ),
    case!(
        (PolicyDefault::Allow, &[], &["bücher.example"]),
        "http://BÜCHER.example/",
        ["93.184.216.34"],
        DENY,
        "deny xn--bcher-kva.example"
    ),
    case!(
        (PolicyDefault::Deny, &[], &[]),
        "http://93.184.216.34/",
        [],
        DENY,
        "default deny"
    ),
    // What is allowed: explicit IP and CIDR rules open the block list (how tests reach
    // their loopback upstreams), host and wildcard rules allow public addresses.
    case!(
        (PolicyDefault::Deny, &["10.1.2.3:22"], &[]),
        "10.1.2.3:22",
        [],
        ALLOW,
        "allow 10.1.2.3:22"
    ),
    case!(
        (PolicyDefault::Deny, &["127.0.0.0/8"], &[]),
        "http://127.0.0.1:8080/",
        [],
        ALLOW,
        "allow 127.0.0.0/8"
    ),
    case!(
        (PolicyDefault::Deny, &["127.0.0.0/8"], &[]),
        "http://[::ffff:127.0.0.1]:8080/",
        [],
        ALLOW,
        "allow 127.0.0.0/8"
    ),
    case!(
        ALLOWED_COM,
        "http://a.b.example.com/",
        ["93.184.216.34"],
        ALLOW,
        "allow *.example.com"
    ),
    case!(
        ALLOWED_COM,
        "allowed.com:443",
        ["93.184.216.34"],
        ALLOW,
        "allow allowed.com"
    ),
    case!(
        (PolicyDefault::Deny, &["203.0.113.0/24"], &[]),
        "http://203.0.113.9/",
        [],
        ALLOW,
        "allow 203.0.113.0/24"
    ),
    case!(OPEN, "http://192.0.2.1/", [], ALLOW, "default allow"),
    case!(
        OPEN,
        "http://public.test/",
        ["93.184.216.34"],
        ALLOW,
        "default allow"
    ),
    // Rules wider than a blocked range lift nothing of it (issue 16): `0.0.0.0/0` says
    // "the internet", not "this machine".
    case!(
        WIDE,
        "http://127.0.0.1:8080/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(WIDE, "http://[::1]/", [], DENY, "block list ::1/128"),
    case!(WIDE, "http://10.0.0.1/", [], DENY, "block list 10.0.0.0/8"),
    case!(
        WIDE,
        "http://100.64.0.1/",
        [],
        DENY,
        "block list 100.64.0.0/10"
    ),
    case!(
        WIDE,
        "http://192.168.1.1/",
        [],
        DENY,
        "block list 192.168.0.0/16"
    ),
    case!(WIDE, "http://[fd00::1]/", [], DENY, "block list fc00::/7"),
    case!(
        WIDE,
        "http://169.254.169.254/",
        [],
        DENY,
        "block list 169.254.0.0/16"
    ),
    case!(
        WIDE,
        "http://[::ffff:127.0.0.1]/",
        [],
        DENY,
        "block list 127.0.0.0/8"
    ),
    case!(WIDE, "http://0.0.0.0/", [], DENY, "block list 0.0.0.0/8"),
    case!(WIDE, "http://93.184.216.34/", [], ALLOW, "allow 0.0.0.0/0"),
    case!(WIDE, "http://[2606:4700::1111]/", [], ALLOW, "allow ::/0"),
    // A rule inside a blocked range lifts only itself.
    case!(
        LOCAL,
        "http://192.168.0.9/",
        [],
        ALLOW,
        "allow 192.168.0.0/24"
    ),
    case!(
        LOCAL,
        "http://192.168.1.9/",
        [],
        DENY,
        "block list 192.168.0.0/16"
    ),
    case!(LOCAL, "http://[fd00::9]/", [], ALLOW, "allow fd00::/8"),
    case!(LOCAL, "http://[fc00::9]/", [], DENY, "block list fc00::/7"),
    case!(
        LOCAL,
        "http://127.0.0.1:8081/",
        [],
        ALLOW,
        "allow 127.0.0.0/8"
    ),
    // aistack's own listeners are refused whatever the rules (issue 16): the gateway,
    // a policy's proxy, published ports on one address and on all of them.
    case!(
        LOCAL,
        "http://127.0.0.1:12434/metrics",
        [],
        DENY,
        "aistack listener 127.0.0.1:12434"
    ),
    case!(
        LOCAL,
        "127.0.0.1:41000",
        [],
        DENY,
        "aistack listener 127.0.0.1:41000"
    ),
    case!(
        LOCAL,
        "http://2130706433:41000/",
        [],
        DENY,
        "aistack listener 127.0.0.1:41000"
    ),
    case!(
        LOCAL,
        "http://[::ffff:7f00:1]:12434/",
        [],
        DENY,
        "aistack listener 127.0.0.1:12434"
    ),
    case!(
        LOCAL,
        "http://local.test:12434/api/pull",
        ["127.0.0.1"],
        DENY,
        "aistack listener 127.0.0.1:12434"
    ),
    case!(
        LOCAL,
        "http://0.0.0.0:12434/",
        [],
        DENY,
        "aistack listener 0.0.0.0:12434"
    ),
    case!(
        LOCAL,
        "http://127.0.0.2:18080/",
        [],
        DENY,
        "aistack listener 127.0.0.2:18080"
    ),
    case!(
        LOCAL,
        "http://10.1.2.3:18080/",
        [],
        DENY,
        "aistack listener 10.1.2.3:18080"
    ),
    case!(
        LOCAL,
        "http://[::1]:19090/",
        [],
        DENY,
        "aistack listener [::1]:19090"
    ),
    case!(
        OPEN,
        "http://203.0.113.9:18080/",
        [],
        DENY,
        "aistack listener 203.0.113.9:18080"
    ),
    case!(
        OPEN,
        "http://203.0.113.10:18080/",
        [],
        ALLOW,
        "default allow"
    ),
    case!(
        (PolicyDefault::Deny, &["203.0.113.9"], &[]),
        "http://203.0.113.9:18080/",
        [],
        DENY,
        "aistack listener 203.0.113.9:18080"
    ),
    // Targets that do not parse are refused before any policy or lookup.
    case!(OPEN, "http://256.0.0.1/", invalid),
    case!(OPEN, "http://1.2.3.4.5/", invalid),
    case!(OPEN, "http://0x100000000/", invalid),
    case!(OPEN, "http://08.0.0.1/", invalid),
    case!(OPEN, "http://[::1/", invalid),
    case!(OPEN, "http://[fe80::1%25eth0]/", invalid),
    case!(OPEN, "gopher://127.0.0.1/", invalid),
    case!(OPEN, "example.com", invalid),
    case!(OPEN, "example.com:0", invalid),
];

fn policy((default, allow, deny): (PolicyDefault, &[&str], &[&str])) -> Policy {
    let rules = |list: &[&str]| -> Vec<HostRule> {
        list.iter().map(|r| HostRule::parse(r).unwrap()).collect()
    };
    Policy::new(&NetworkPolicy {
        default,
        allow: rules(allow),
        deny: rules(deny),
        bypass: Vec::new(),
        credentials: Vec::new(),
    })
}

/// The listeners of the corpus's daemon: a gateway and a policy's proxy on loopback, a
/// port published on every address and one on `::1`; `203.0.113.9` is the machine's own.
fn own() -> OwnListeners {
    let own = OwnListeners::new().with_is_local(|ip| ip.to_string() == "203.0.113.9");
    for listener in [
        "127.0.0.1:12434",
        "127.0.0.1:41000",
        "0.0.0.0:18080",
        "[::1]:19090",
    ] {
        std::mem::forget(own.add(listener.parse().unwrap()));
    }
    own
}

fn target(text: &str) -> Result<(Destination, u16), aistack_proxy::DestinationError> {
    if text.contains("://") {
        Destination::parse_uri(text)
    } else {
        Destination::parse_authority(text, None)
    }
}

#[test]
fn every_case_of_the_corpus_gets_its_verdict_and_reason() {
    assert!(CORPUS.len() >= 100, "the corpus has {} cases", CORPUS.len());
    let own = own();
    let mut failures = Vec::new();
    for case in CORPUS {
        let lookups = Cell::new(0);
        let got = target(case.target).map(|(destination, port)| {
            policy(case.policy).check(&destination, port, &own, |_| {
                lookups.set(lookups.get() + 1);
                case.dns
                    .iter()
                    .map(|a| a.parse::<IpAddr>().unwrap())
                    .collect()
            })
        });
        let ok = match (&got, case.expect) {
            (Err(_), None) => true,
            (Ok(verdict), Some((decision, reason))) => {
                verdict.decision == decision
                    && verdict.reason.to_string().starts_with(reason)
                    && (verdict.decision == Decision::Deny) == verdict.address.is_none()
            }
            _ => false,
        };
        if !ok || lookups.get() > 1 {
            failures.push(format!(
                "{}: got {got:?}, lookups {}",
                case.target,
                lookups.get()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A denied name is never looked up, and the address to dial is one the single lookup
/// returned: a resolver whose second answer would differ is never asked twice.
#[test]
fn a_name_is_resolved_at_most_once_and_the_checked_address_is_dialled() {
    let policy = policy(ALLOWED_COM);
    let own = own();
    let (destination, port) = target("http://evil.example.com/").unwrap();
    let verdict = policy.check(&destination, port, &own, |_| {
        panic!("a denied name is not resolved")
    });
    assert_eq!(verdict.reason, Reason::Deny("evil.example.com".into()));

    let answers = ["93.184.216.34", "127.0.0.1"];
    let calls = Cell::new(0);
    let (destination, port) = target("http://api.example.com/").unwrap();
    let verdict = policy.check(&destination, port, &own, |_| {
        let answer = answers[calls.get()];
        calls.set(calls.get() + 1);
        vec![answer.parse().unwrap()]
    });
    assert_eq!(calls.get(), 1);
    assert_eq!(verdict.decision, Decision::Allow);
    assert_eq!(verdict.address, Some("93.184.216.34".parse().unwrap()));
}
