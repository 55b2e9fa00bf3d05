//! `Audit`: read and verify the hash-chained audit log.

use serde_json::json;
use tailops_proto::v1::{self, audit_server::Audit};
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::audit::AuditRecord;
use crate::auth::{Principal, Tier};
use crate::services::internal;

#[derive(Debug, Clone)]
pub struct AuditService {
    state: AppState,
}

impl AuditService {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn list_audit(
        &self,
        request: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        let principal = Principal::of(&request)?;
        let mut req = request.into_inner();
        // Anyone may see what they did themselves (an assistant's bridge asking what it did
        // recently); everyone's activity is for admins.
        if !principal.holds(Tier::Admin) {
            let me = principal.uri();
            if !req.principal.is_empty() && req.principal != me {
                let why = format!(
                    "only admins may list other principals' audit rows; you may list your own ({me})"
                );
                let arguments = json!({"principal": req.principal});
                let record = AuditRecord::deny(me, "audit.list", arguments, &why).via(principal.client);
                self.state.audit.record(record).await;
                return Err(Status::permission_denied(why));
            }
            req.principal = me;
        }
        self.state.audit.flush().await;
        let entries = crate::audit::list(&self.state.store, &req).await.map_err(internal)?;
        Ok(Response::new(v1::ListAuditResponse { entries }))
    }

    async fn verify_audit(
        &self,
        _request: Request<v1::VerifyAuditRequest>,
    ) -> Result<Response<v1::VerifyAuditResponse>, Status> {
        let report = self.state.audit.verify().await.map_err(internal)?;
        Ok(Response::new(report))
    }
}
