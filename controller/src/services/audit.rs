//! `Audit`: read and verify the hash-chained audit log.

use tailops_proto::v1::{self, audit_server::Audit};
use tonic::{Request, Response, Status};

use crate::AppState;
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
        self.state.audit.flush().await;
        let entries = crate::audit::list(&self.state.store, &request.into_inner()).await.map_err(internal)?;
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
