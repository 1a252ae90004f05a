//! Checks that need the whole decoded file: references resolve, template inheritance has
//! no cycle, published ports do not collide, credentials are not bypassed.
//!
//! Every check reports at the span of the offending value, looked up by dotted path in the
//! locations decoding recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::decode::{Cx, Declared, did_you_mean};
use crate::diagnostic::{Diagnostic, Location, codes};
use crate::model::Spec;
use crate::values::{ModelMode, TemplateFrom};

fn location(cx: &Cx, path: &str) -> Location {
    cx.locations
        .get(path)
        .cloned()
        .unwrap_or_else(|| Location::new(0, 0..0))
}

fn resolve(
    cx: &mut Cx,
    path: &str,
    name: &str,
    what: &str,
    section: &str,
    names: &BTreeSet<String>,
) {
    if names.contains(name) {
        return;
    }
    let help = match did_you_mean(name, names.iter().map(String::as_str)) {
        Some(m) => format!("Did you mean `{m}`?"),
        None if names.is_empty() => format!("Define it under `{section}`"),
        None => format!(
            "Define it under `{section}`, or use one of {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let location = location(cx, path);
    cx.diagnostics.push(
        Diagnostic::new(
            codes::UNRESOLVED_REFERENCE,
            format!("{what} `{name}` is not defined"),
            location,
            format!("no {} of this name", what.to_lowercase()),
        )
        .with_help(help),
    );
}

/// Runs every check on the decoded `spec`, reporting into `cx`.
pub fn validate(cx: &mut Cx, spec: &Spec, declared: &Declared) {
    references(cx, spec, declared);
    agent_models(cx, spec, declared);
    cycles(cx, spec);
    ports(cx, spec);
    bypassed_credentials(cx, spec);
}

fn references(cx: &mut Cx, spec: &Spec, declared: &Declared) {
    for (name, template) in &spec.templates {
        if let Some(policy) = &template.network_policy {
            let path = format!("templates.{name}.network_policy");
            resolve(
                cx,
                &path,
                policy,
                "Network policy",
                "network_policies",
                &declared.policies,
            );
        }
    }
    for (name, sandbox) in &spec.sandboxes {
        let path = format!("sandboxes.{name}.template");
        resolve(
            cx,
            &path,
            &sandbox.template,
            "Template",
            "templates",
            &declared.templates,
        );
        if let Some(policy) = &sandbox.network_policy {
            let path = format!("sandboxes.{name}.network_policy");
            resolve(
                cx,
                &path,
                policy,
                "Network policy",
                "network_policies",
                &declared.policies,
            );
        }
        for (i, model) in sandbox.models.iter().enumerate() {
            let path = format!("sandboxes.{name}.models.{i}");
            resolve(cx, &path, model, "Model", "models", &declared.models);
        }
    }
}

/// An agent's model is one of the project's chat models, with the context the agent is told
/// it has, and the agent is one that can be pointed at it.
fn agent_models(cx: &mut Cx, spec: &Spec, declared: &Declared) {
    for (name, sandbox) in &spec.sandboxes {
        let Some(model) = &sandbox.agent.model else {
            continue;
        };
        let agent = sandbox.agent.name;
        let path = format!("sandboxes.{name}.agent.model");
        if !agent.runs_on_local_models() {
            let location = location(cx, &path);
            cx.diagnostics.push(
                Diagnostic::new(
                    codes::INVALID_VALUE,
                    format!("Agent `{agent}` cannot run on a local model"),
                    location,
                    "no local model for this agent",
                )
                .with_help(format!(
                    "Run `claude`, `codex`, `copilot`, `gemini` or `opencode` on `{model}`, or list `{model}` in `sandboxes.{name}.models` to reach it at `${}_URL`",
                    model.to_uppercase().replace('-', "_")
                )),
            );
            continue;
        }
        resolve(cx, &path, model, "Model", "models", &declared.models);
        let Some(settings) = spec.models.get(model) else {
            continue;
        };
        let problem = if settings.mode != ModelMode::Chat {
            Some((
                format!(
                    "Agent `{agent}` of sandbox `{name}` runs on `{model}`, which serves `{}`",
                    settings.mode
                ),
                "not a chat model".to_owned(),
                "Name a model with `mode: chat` (the default)".to_owned(),
            ))
        } else if settings.context_size.is_none() {
            Some((
                format!(
                    "Agent `{agent}` of sandbox `{name}` runs on `{model}`, which has no `context_size`"
                ),
                "the agent is told this model's context".to_owned(),
                format!(
                    "Set `models.{model}.context_size`, e.g. `32768`: agents send 10k to 15k tokens of instructions and tools before the first question"
                ),
            ))
        } else {
            None
        };
        if let Some((message, label, help)) = problem {
            let location = location(cx, &path);
            cx.diagnostics.push(
                Diagnostic::new(codes::INVALID_VALUE, message, location, label).with_help(help),
            );
        }
    }
}

fn cycles(cx: &mut Cx, spec: &Spec) {
    let parent = |name: &str| match spec.templates.get(name).map(|t| &t.from) {
        Some(TemplateFrom::Template(p)) => Some(p.clone()),
        _ => None,
    };
    let mut done: BTreeSet<String> = BTreeSet::new();
    for start in spec.templates.keys() {
        let mut chain: Vec<String> = Vec::new();
        let mut current = Some(start.clone());
        while let Some(name) = current {
            if done.contains(&name) {
                break;
            }
            if let Some(i) = chain.iter().position(|n| *n == name) {
                let Some(closing) = chain.last().cloned() else {
                    break;
                };
                let mut names: Vec<String> = chain[i..].iter().map(|n| format!("`{n}`")).collect();
                names.push(format!("`{name}`"));
                let location = location(cx, &format!("templates.{closing}.from"));
                cx.diagnostics.push(
                    Diagnostic::new(
                        codes::CYCLE,
                        format!("Template inheritance loops: {}", names.join(" -> ")),
                        location,
                        "closes the loop",
                    )
                    .with_help("Base one of these templates on an image or a directory instead"),
                );
                break;
            }
            chain.push(name.clone());
            current = parent(&name);
        }
        done.extend(chain);
    }
}

fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a == b
        || (a.is_unspecified() && a.is_ipv4() == b.is_ipv4())
        || (b.is_unspecified() && a.is_ipv4() == b.is_ipv4())
}

fn ports(cx: &mut Cx, spec: &Spec) {
    let mut seen: BTreeMap<u16, Vec<(IpAddr, String)>> = BTreeMap::new();
    let listen = spec.gateway.listen;
    seen.entry(listen.port())
        .or_default()
        .push((listen.ip(), "gateway.listen".to_owned()));
    for (name, sandbox) in &spec.sandboxes {
        for (i, mapping) in sandbox.ports.iter().enumerate() {
            let path = format!("sandboxes.{name}.ports.{i}");
            let users = seen.entry(mapping.host_port).or_default();
            let clash = users
                .iter()
                .find(|(ip, _)| overlaps(*ip, mapping.host_ip))
                .map(|(_, p)| p.clone());
            users.push((mapping.host_ip, path.clone()));
            if let Some(first) = clash {
                let location = location(cx, &path);
                let mut d = Diagnostic::new(
                    codes::CONFLICT,
                    format!(
                        "Host port `{}:{}` is already used by `{first}`",
                        mapping.host_ip, mapping.host_port
                    ),
                    location,
                    "published again here",
                )
                .with_help("Publish on another host port");
                if first == "gateway.listen" {
                    d = d.with_help("The gateway listens there; publish on another host port");
                }
                cx.diagnostics.push(d);
            }
        }
    }
}

fn bypassed_credentials(cx: &mut Cx, spec: &Spec) {
    for (name, policy) in &spec.network_policies {
        for (i, credential) in policy.credentials.iter().enumerate() {
            let Some(j) = policy
                .bypass
                .iter()
                .position(|rule| rule.matches_host(&credential.host))
            else {
                continue;
            };
            let location = location(cx, &format!("network_policies.{name}.credentials.{i}.host"));
            cx.diagnostics.push(
                Diagnostic::new(
                    codes::CONFLICT,
                    format!(
                        "Credential host `{}` is also in `network_policies.{name}.bypass`",
                        credential.host
                    ),
                    location,
                    format!("bypassed by `{}`", policy.bypass.get(j).map(ToString::to_string).unwrap_or_default()),
                )
                .with_help("Bypassed hosts are not intercepted, so no header can be injected; remove the host from `bypass` or drop the credential"),
            );
        }
    }
}
