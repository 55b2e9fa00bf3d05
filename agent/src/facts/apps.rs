//! `app.<name>` = the evidence that a well-known application runs here (`unit jellyfin.service`,
//! `container pihole`, `file /etc/pihole`, `port 11434`).
//!
//! Evidence is taken strongest first: a systemd unit or a container (found by name or image, in
//! the facts already collected), then a file or directory the application's packages create,
//! then a listening TCP port. Each application reports the first evidence found, in a fixed
//! order, so the value only changes when the evidence does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{Facts, exists, read_text, under};

struct App {
    key: &'static str,
    /// Word sequences that identify it in a unit, container or image name (`home-assistant`
    /// and `homeassistant` are `["home", "assistant"]` and `["homeassistant"]`).
    names: &'static [&'static [&'static str]],
    /// Paths only the application's own packages create (absolute, as on the host): its main
    /// configuration file where other packages drop snippets into its directory
    /// (`/etc/apache2/conf-available` exists without Apache). A last component `*.ext` matches
    /// any file with that extension in the directory.
    paths: &'static [&'static str],
    /// Default ports distinctive enough to count. A port says only that *something* listens
    /// there, so ports that many programs use by default are left out: 80/443 (any web server),
    /// 3000 (Grafana, AdGuard Home and every Node.js app), 9000/9443 (Portainer, php-fpm,
    /// MinIO), 9090 (Prometheus, Cockpit), 53 (any DNS server).
    ports: &'static [u16],
}

const APPS: &[App] = &[
    App {
        key: "adguard",
        names: &[&["adguardhome"], &["adguard"]],
        paths: &["/opt/AdGuardHome"],
        ports: &[],
    },
    App {
        key: "apache",
        names: &[&["apache2"], &["apache"], &["httpd"]],
        paths: &["/etc/apache2/apache2.conf", "/etc/httpd/conf/httpd.conf"],
        ports: &[],
    },
    App {
        key: "grafana",
        names: &[&["grafana"]],
        paths: &["/var/lib/grafana", "/etc/grafana/grafana.ini"],
        ports: &[],
    },
    App {
        key: "home-assistant",
        names: &[&["home", "assistant"], &["homeassistant"]],
        paths: &["/srv/homeassistant", "/usr/share/hassio"],
        ports: &[8123],
    },
    App {
        key: "jellyfin",
        names: &[&["jellyfin"]],
        paths: &["/var/lib/jellyfin", "/etc/jellyfin"],
        ports: &[8096],
    },
    App {
        key: "mongodb",
        names: &[&["mongo"], &["mongod"], &["mongodb"]],
        paths: &["/var/lib/mongodb", "/etc/mongod.conf"],
        ports: &[27017],
    },
    // /etc/mysql is left out: the client packages create it too.
    App {
        key: "mysql",
        names: &[&["mysql"], &["mysqld"], &["mariadb"], &["mariadbd"]],
        paths: &["/var/lib/mysql"],
        ports: &[3306],
    },
    App {
        key: "nextcloud",
        names: &[&["nextcloud"]],
        paths: &["/var/www/nextcloud", "/etc/nextcloud", "/var/snap/nextcloud"],
        ports: &[],
    },
    App { key: "nginx", names: &[&["nginx"]], paths: &["/etc/nginx/nginx.conf"], ports: &[] },
    App { key: "ollama", names: &[&["ollama"]], paths: &["/usr/share/ollama"], ports: &[11434] },
    App { key: "pihole", names: &[&["pihole"], &["pi", "hole"]], paths: &["/etc/pihole"], ports: &[] },
    App {
        key: "plex",
        names: &[&["plex"], &["plexmediaserver"], &["pms", "docker"]],
        paths: &["/var/lib/plexmediaserver"],
        ports: &[32400],
    },
    App { key: "portainer", names: &[&["portainer"]], paths: &[], ports: &[] },
    App {
        key: "postgresql",
        names: &[&["postgres"], &["postgresql"], &["postgis"]],
        paths: &["/var/lib/postgresql", "/var/lib/pgsql"],
        ports: &[5432],
    },
    // The server's configuration: /etc/prometheus alone also holds exporters' settings.
    App {
        key: "prometheus",
        names: &[&["prometheus"]],
        paths: &["/etc/prometheus/prometheus.yml"],
        ports: &[],
    },
    App { key: "redis", names: &[&["redis"]], paths: &["/etc/redis/redis.conf"], ports: &[6379] },
    App {
        key: "wireguard",
        names: &[&["wireguard"], &["wg", "quick"], &["wg", "easy"]],
        paths: &["/etc/wireguard/*.conf"],
        ports: &[],
    },
];

/// Words that make a name a companion of an application rather than the application:
/// `prometheus-node-exporter`, `grafana-agent`, `portainer_agent`, `prometheus-alertmanager`.
const COMPANION_WORDS: &[&str] = &["exporter", "agent", "alertmanager", "pushgateway"];

pub(super) async fn collect(root: &Path, known: &Facts) -> Facts {
    let (ports, paths) = tokio::join!(listening_ports(root), present_paths(root));
    detect(known, &ports, &paths)
}

fn detect(known: &Facts, listening: &BTreeSet<u16>, paths: &BTreeMap<&str, String>) -> Facts {
    // (words of a name, evidence), units before containers.
    let mut named: Vec<(Vec<String>, String)> = Vec::new();
    for (key, value) in known {
        if let Some(unit) = key.strip_prefix("unit.")
            && !value.starts_with("not-found/")
        {
            named.push((words(unit), format!("unit {unit}")));
        }
    }
    for key in known.keys() {
        if let Some(container) = key.strip_prefix("container.").and_then(|k| k.strip_suffix(".image")) {
            let evidence = format!("container {container}");
            named.push((words(container), evidence.clone()));
            named.push((words(image_name(&known[key])), evidence));
        }
    }
    named.retain(|(words, _)| !words.iter().any(|w| COMPANION_WORDS.contains(&w.as_str())));

    let mut facts = Facts::new();
    for app in APPS {
        let by_name = named.iter().find(|(words, _)| app.names.iter().any(|seq| contains_run(words, seq)));
        let evidence = by_name
            .map(|(_, evidence)| evidence.clone())
            .or_else(|| app.paths.iter().find_map(|p| paths.get(p)).map(|found| format!("file {found}")))
            .or_else(|| app.ports.iter().find(|p| listening.contains(p)).map(|p| format!("port {p}")));
        if let Some(evidence) = evidence {
            facts.insert(format!("app.{}", app.key), evidence);
        }
    }
    facts
}

/// Lowercase alphanumeric words: `pihole-FTL.service` → `pihole ftl service`.
fn words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

fn contains_run(words: &[String], run: &[&str]) -> bool {
    words.windows(run.len()).any(|window| window.iter().zip(run).all(|(w, r)| w == r))
}

/// The product part of an image reference: `ghcr.io/home-assistant/home-assistant:stable` →
/// `home-assistant`. The registry and namespace are left out because a vendor's namespace
/// holds its other products too (`grafana/loki` is not Grafana).
fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// Every path pattern in [`APPS`] that exists under `root`, with the path found.
async fn present_paths(root: &Path) -> BTreeMap<&'static str, String> {
    let patterns = APPS.iter().flat_map(|app| app.paths.iter().copied());
    let checks =
        patterns.map(|pattern| async move { find_path(root, pattern).await.map(|found| (pattern, found)) });
    futures::future::join_all(checks).await.into_iter().flatten().collect()
}

async fn find_path(root: &Path, pattern: &str) -> Option<String> {
    let (dir, file) = pattern.rsplit_once('/')?;
    let Some(extension) = file.strip_prefix('*') else {
        return exists(root, pattern).await.then(|| pattern.to_owned());
    };
    let mut entries = tokio::fs::read_dir(under(root, dir)).await.ok()?;
    let mut matches = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(extension) && name.len() > extension.len() {
            matches.push(name);
        }
    }
    // The first in name order, so the evidence does not depend on directory order.
    matches.sort();
    matches.first().map(|name| format!("{dir}/{name}"))
}

/// TCP ports in the LISTEN state (`0A`), IPv4 and IPv6, on any address.
async fn listening_ports(root: &Path) -> BTreeSet<u16> {
    let (v4, v6) = tokio::join!(read_text(root, "/proc/net/tcp"), read_text(root, "/proc/net/tcp6"));
    [v4, v6].into_iter().flatten().flat_map(|table| parse_listening(&table)).collect()
}

/// `sl local_address rem_address st ...` rows; the local address is `HEXIP:HEXPORT`.
fn parse_listening(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let mut fields = row.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != "0A" {
                return None;
            }
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::testutil::fixture_root;

    fn facts(pairs: &[(&str, &str)]) -> Facts {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn from_units_and_containers() {
        let known = facts(&[
            ("unit.jellyfin.service", "loaded/active/running"),
            ("unit.pihole-FTL.service", "loaded/active/running"),
            ("unit.postgresql@15-main.service", "loaded/failed/failed"),
            ("unit.lighttpd.service", "loaded/active/running"),
            ("unit.prometheus-node-exporter.service", "loaded/active/running"),
            ("unit.grafana-agent.service", "loaded/active/running"),
            ("unit.mysql.service", "not-found/inactive/dead"),
            ("unit.wg-quick@wg0.service", "loaded/active/exited"),
            ("container.ha.image", "ghcr.io/home-assistant/home-assistant:stable"),
            ("container.ha.state", "running"),
            ("container.ollama.image", "ollama/ollama:0.3.14"),
            ("container.logs.image", "grafana/loki:3.2.0"),
            ("container.media.image", "plexinc/pms-docker:latest@sha256:0123abcd"),
            ("container.cloud.image", "nextcloud:29-apache"),
        ]);
        let apps = detect(&known, &BTreeSet::new(), &BTreeMap::new());
        assert_eq!(
            apps,
            facts(&[
                ("app.home-assistant", "container ha"),
                ("app.jellyfin", "unit jellyfin.service"),
                ("app.nextcloud", "container cloud"),
                ("app.ollama", "container ollama"),
                ("app.pihole", "unit pihole-FTL.service"),
                ("app.plex", "container media"),
                ("app.postgresql", "unit postgresql@15-main.service"),
                ("app.wireguard", "unit wg-quick@wg0.service"),
            ])
        );
    }

    #[test]
    fn stronger_evidence_wins() {
        let known = facts(&[("container.cache.image", "redis:7")]);
        let ports = BTreeSet::from([6379, 5432, 80, 3000]);
        let paths = BTreeMap::from([
            ("/etc/redis/redis.conf", "/etc/redis/redis.conf".to_owned()),
            ("/var/lib/postgresql", "/var/lib/postgresql".to_owned()),
        ]);
        let apps = detect(&known, &ports, &paths);
        assert_eq!(
            apps,
            facts(&[("app.postgresql", "file /var/lib/postgresql"), ("app.redis", "container cache")])
        );
        // Only distinctive ports count: 80 and 3000 name nothing.
        let apps = detect(&Facts::new(), &ports, &BTreeMap::new());
        assert_eq!(apps, facts(&[("app.postgresql", "port 5432"), ("app.redis", "port 6379")]));
    }

    /// /proc/net/tcp with a listener on 11434 (ollama, localhost), an established connection
    /// from port 8096 (not listening), and a listener on 22.
    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2CAA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 31337 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20211 1 0000000000000000 100 0 0 10 0
   2: 0A00020F:1FA0 0A000201:D3C4 01 00000000:00000000 02:000A7D4B 00000000     0        0 40123 2 0000000000000000 20 4 30 10 -1
";
    /// /proc/net/tcp6 with PostgreSQL listening on [::]:5432.
    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1538 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 28842 1 0000000000000000 100 0 0 10 0
";

    #[tokio::test]
    async fn from_a_fixture_root() {
        let root = fixture_root(&[
            ("/proc/net/tcp", TCP),
            ("/proc/net/tcp6", TCP6),
            ("/etc/pihole/setupVars.conf", "PIHOLE_INTERFACE=eth0\n"),
            ("/etc/wireguard/wg1.conf", "[Interface]\n"),
            ("/etc/wireguard/wg0.conf", "[Interface]\n"),
            ("/etc/wireguard/README", ""),
            ("/etc/nginx/nginx.conf", "events {}\n"),
            ("/etc/apache2/conf-available/javascript-common.conf", ""),
            ("/etc/prometheus/", ""),
            ("/var/lib/plexmediaserver/", ""),
        ])
        .await;
        let known = facts(&[("unit.nginx.service", "loaded/active/running")]);
        let apps = collect(root.path(), &known).await;
        assert_eq!(
            apps,
            facts(&[
                ("app.nginx", "unit nginx.service"),
                ("app.ollama", "port 11434"),
                ("app.pihole", "file /etc/pihole"),
                ("app.plex", "file /var/lib/plexmediaserver"),
                ("app.postgresql", "port 5432"),
                ("app.wireguard", "file /etc/wireguard/wg0.conf"),
            ])
        );
        // An empty root: nothing.
        assert!(collect(fixture_root(&[]).await.path(), &Facts::new()).await.is_empty());
    }

    #[test]
    fn listening_ports_only() {
        assert_eq!(parse_listening(TCP), [11434, 22]);
        assert_eq!(parse_listening(TCP6), [5432]);
        assert!(parse_listening("garbage\nmore garbage\n").is_empty());
    }
}
