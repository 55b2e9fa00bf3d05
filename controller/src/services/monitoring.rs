//! `Monitoring`: host details, metric ranges, the fleet summary and inventory changes. Every
//! answer comes from memory or one indexed query; none waits on an agent.

use std::collections::HashSet;

use tailops_proto::v1::{self, monitoring_server::Monitoring as MonitoringApi};
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::services::{internal, visible_host, visible_hosts};
use crate::store::{ChangeFilter, MetricTable};
use crate::{AppState, now_ms};

/// Points one query may return.
pub const MAX_POINTS: u32 = 20_000;
const DEFAULT_RANGE_MS: i64 = 3_600_000;
/// `auto` uses raw samples up to this range, minutes up to `AUTO_MINUTES_UP_TO`, hours beyond.
const AUTO_RAW_UP_TO: i64 = 3 * 3_600_000;
const AUTO_MINUTES_UP_TO: i64 = 4 * 86_400_000;
const DEFAULT_CHANGES: u32 = 200;
const MAX_CHANGES: u32 = 10_000;
const DEFAULT_TOP: u32 = 5;
const MAX_TOP: u32 = 100;

#[derive(Debug, Clone)]
pub struct MonitoringService {
    state: AppState,
}

impl MonitoringService {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// The host named `name_or_id`, if `principal` may see it. A host outside the principal's
    /// scope is reported as not found, so scoped identities cannot probe for names.
    async fn host(&self, principal: &Principal, name_or_id: &str) -> Result<v1::Host, Status> {
        if name_or_id.is_empty() {
            return Err(Status::invalid_argument("name a host (its name or id)"));
        }
        visible_host(&self.state, principal, name_or_id).await?.ok_or_else(|| {
            Status::not_found(format!("no host named {name_or_id:?}; `tailopsctl hosts ls` lists them"))
        })
    }
}

#[tonic::async_trait]
impl MonitoringApi for MonitoringService {
    async fn get_host(
        &self,
        request: Request<v1::GetHostRequest>,
    ) -> Result<Response<v1::GetHostResponse>, Status> {
        let principal = Principal::of(&request)?;
        let host = self.host(&principal, &request.get_ref().host).await?;
        let facts = self.state.store.facts(&host.id).await.map_err(internal)?;
        Ok(Response::new(v1::GetHostResponse {
            host_id: host.id,
            name: host.name,
            labels: host.labels,
            online: host.online,
            last_seen_ms: host.last_seen_ms,
            facts,
            latest: host.latest,
            health: host.health,
        }))
    }

    async fn query_metrics(
        &self,
        request: Request<v1::QueryMetricsRequest>,
    ) -> Result<Response<v1::QueryMetricsResponse>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.get_ref();
        let host = self.host(&principal, &req.host).await?;
        let now = now_ms();
        let until = if req.until_ms == 0 { now } else { req.until_ms };
        let since = if req.since_ms == 0 { until - DEFAULT_RANGE_MS } else { req.since_ms };
        if since >= until {
            return Err(Status::invalid_argument("the range is empty: --since must be before --until"));
        }
        let config = self.state.monitoring.config();
        let raw_kept_from = now.saturating_sub(config.raw_retention_ms());
        let resolution = match req.resolution() {
            v1::Resolution::Auto => {
                let span = until - since;
                if span <= AUTO_RAW_UP_TO && since >= raw_kept_from {
                    v1::Resolution::Raw
                } else if span <= AUTO_MINUTES_UP_TO {
                    v1::Resolution::Minute
                } else {
                    v1::Resolution::Hour
                }
            }
            explicit => explicit,
        };
        let table = match resolution {
            v1::Resolution::Raw => MetricTable::Raw,
            v1::Resolution::Minute => MetricTable::Minute,
            v1::Resolution::Auto | v1::Resolution::Hour => MetricTable::Hour,
        };
        let mut points = self
            .state
            .store
            .metric_points(&host.id, table, since, until, MAX_POINTS + 1)
            .await
            .map_err(internal)?;
        if points.len() > MAX_POINTS as usize {
            return Err(Status::invalid_argument(format!(
                "more than {MAX_POINTS} points in that range at {} resolution; narrow --since or choose a coarser \
                 --resolution",
                resolution.short_name()
            )));
        }
        points.shrink_to_fit();
        Ok(Response::new(v1::QueryMetricsResponse {
            host_id: host.id,
            resolution: resolution as i32,
            points,
        }))
    }

    async fn fleet_summary(
        &self,
        request: Request<v1::FleetSummaryRequest>,
    ) -> Result<Response<v1::FleetSummaryResponse>, Status> {
        let principal = Principal::of(&request)?;
        let top = match request.get_ref().top {
            0 => DEFAULT_TOP,
            n => n.min(MAX_TOP),
        } as usize;
        let hosts = visible_hosts(&self.state, &principal).await?;
        let mut summary = v1::FleetSummaryResponse::default();
        let mut usage: Vec<(&v1::Host, f64, f64, f64)> = Vec::new();
        for host in &hosts {
            summary.hosts += 1;
            if host.online {
                summary.online += 1;
            } else {
                summary.offline += 1;
            }
            let health = host.health.clone().unwrap_or_default();
            if health.stale {
                summary.stale += 1;
            }
            match health.status() {
                v1::HealthStatus::Unhealthy => summary.unhealthy += 1,
                v1::HealthStatus::Degraded => summary.degraded += 1,
                _ => {}
            }
            if let Some(sample) = host.latest.as_ref().filter(|_| host.online && !health.stale) {
                let mem = sample.memory_percent();
                usage.push((host, sample.cpu_percent, mem, sample.fullest_disk_percent()));
            }
            summary.vitals.push(v1::HostVitals {
                host_id: host.id.clone(),
                latest: host.latest.clone(),
                health: host.health.clone(),
            });
        }
        let top_by = |pick: fn(&(&v1::Host, f64, f64, f64)) -> f64| {
            let mut ranked: Vec<_> = usage.iter().map(|u| (u.0, pick(u))).collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.name.cmp(&b.0.name)));
            ranked
                .into_iter()
                .take(top)
                .map(|(h, value)| v1::HostUsage { host_id: h.id.clone(), name: h.name.clone(), value })
                .collect::<Vec<_>>()
        };
        summary.top_cpu = top_by(|u| u.1);
        summary.top_memory = top_by(|u| u.2);
        summary.top_disk = top_by(|u| u.3);
        Ok(Response::new(summary))
    }

    async fn list_changes(
        &self,
        request: Request<v1::ListChangesRequest>,
    ) -> Result<Response<v1::ListChangesResponse>, Status> {
        let principal = Principal::of(&request)?;
        let req = request.get_ref();
        let host_id =
            if req.host.is_empty() { None } else { Some(self.host(&principal, &req.host).await?.id) };
        let limit = match req.limit {
            0 => DEFAULT_CHANGES,
            n => n.min(MAX_CHANGES),
        };
        let filter =
            ChangeFilter { host_id, since_ms: req.since_ms, key_prefix: req.key_prefix.clone(), limit };
        let mut changes = self.state.store.fact_changes(&filter).await.map_err(internal)?;
        if filter.host_id.is_none() && principal.scope.is_some() {
            let visible: HashSet<String> =
                visible_hosts(&self.state, &principal).await?.into_iter().map(|h| h.id).collect();
            changes.retain(|c| visible.contains(&c.host_id));
        }
        Ok(Response::new(v1::ListChangesResponse { changes }))
    }
}
