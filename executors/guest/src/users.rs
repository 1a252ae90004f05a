//! Users of the sandbox, from its `/etc/passwd` (read directly: the agent is a static
//! binary and takes no NSS modules).

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;

use aistack_sandbox::idmap::AGENT_ID;

/// The user commands run as when the request names none.
pub const AGENT: &str = "agent";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Resolves a name from `/etc/passwd`, or `UID[:GID]`.
pub fn resolve(spec: &str) -> io::Result<User> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    resolve_in(&passwd, spec).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "No user `{spec}` in the sandbox's /etc/passwd; give a name it has, or UID[:GID]"
            ),
        )
    })
}

fn resolve_in(passwd: &str, spec: &str) -> Option<User> {
    let entries = passwd.lines().filter_map(parse_line);
    if let Some((uid, gid)) = numeric(spec) {
        let known = entries.clone().find(|u| u.uid == uid);
        return Some(User {
            name: known
                .as_ref()
                .map_or_else(|| uid.to_string(), |u| u.name.clone()),
            uid,
            gid: gid.or(known.as_ref().map(|u| u.gid)).unwrap_or(uid),
            home: known.map_or_else(|| "/".to_string(), |u| u.home),
        });
    }
    entries.into_iter().find(|u| u.name == spec)
}

fn numeric(spec: &str) -> Option<(u32, Option<u32>)> {
    match spec.split_once(':') {
        Some((uid, gid)) => Some((uid.parse().ok()?, Some(gid.parse().ok()?))),
        None => Some((spec.parse().ok()?, None)),
    }
}

fn parse_line(line: &str) -> Option<User> {
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 {
        return None;
    }
    Some(User {
        name: fields[0].to_string(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: fields[5].to_string(),
    })
}

/// Adds the `agent` user (uid and gid 1000, home `/home/agent`) to a root filesystem
/// that lacks it. Its writes land in the sandbox's own layer, not the template.
pub fn ensure_agent() -> io::Result<()> {
    ensure_agent_in(Path::new("/"))
}

fn ensure_agent_in(root: &Path) -> io::Result<()> {
    // The home is made in every sandbox that lacks one, even where the template knows
    // the user: a template build's own is taken out of its layer (it would belong to no
    // sandbox's agent).
    let home = root.join("home").join(AGENT);
    if !home.exists() {
        fs::create_dir_all(&home)?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755))?;
        chown(&home, Some(AGENT_ID), Some(AGENT_ID))?;
    }
    let passwd_path = root.join("etc/passwd");
    let passwd = fs::read_to_string(&passwd_path).unwrap_or_default();
    if passwd
        .lines()
        .filter_map(parse_line)
        .any(|u| u.name == AGENT)
    {
        return Ok(());
    }
    fs::create_dir_all(root.join("etc"))?;
    append_line(
        &passwd_path,
        &passwd,
        &format!("{AGENT}:x:{AGENT_ID}:{AGENT_ID}:aistack agent:/home/{AGENT}:/bin/sh"),
    )?;
    let group_path = root.join("etc/group");
    let group = fs::read_to_string(&group_path).unwrap_or_default();
    if !group.lines().any(|l| l.split(':').next() == Some(AGENT)) {
        append_line(&group_path, &group, &format!("{AGENT}:x:{AGENT_ID}:"))?;
    }
    Ok(())
}

fn append_line(path: &Path, existing: &str, line: &str) -> io::Result<()> {
    let mut text = existing.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000::/home/agent:/bin/sh\n";

    #[test]
    fn names_and_numbers_resolve() {
        assert_eq!(resolve_in(PASSWD, "agent").unwrap().home, "/home/agent");
        assert_eq!(resolve_in(PASSWD, "0").unwrap().name, "root");
        let stranger = resolve_in(PASSWD, "4242:7").unwrap();
        assert_eq!(
            (stranger.uid, stranger.gid, stranger.home.as_str()),
            (4242, 7, "/")
        );
        assert_eq!(resolve_in(PASSWD, "nobody"), None);
    }

    #[test]
    fn the_agent_user_is_added_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh",
        )
        .unwrap();
        ensure_agent_in(dir.path()).unwrap();
        ensure_agent_in(dir.path()).unwrap();
        let passwd = fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert_eq!(passwd.matches("agent:x:1000").count(), 1);
        assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/sh\n"));
        assert!(dir.path().join("home/agent").is_dir());
    }
}
