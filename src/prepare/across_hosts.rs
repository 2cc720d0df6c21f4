//! Payloads built once per run, not once per host: the first host of a run to need a
//! derivation builds it; another host that needs it waits for that build, then receives
//! the outputs from the host that built them, with Nix's own copying (`nix copy --from
//! ssh://A --to ssh://B`), and only roots them. Outputs already valid on a host are not
//! sent. When the copy fails (the builder went away), the host builds them itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::Result;

use super::Claim;
use crate::executor::Placement;
use crate::tools::log::HostLog;
use crate::tools::nix::Nix;

/// Who built each derivation of the run, where and in which job (`None`: its build
/// failed).
#[derive(Debug, Default)]
pub struct RunBuilds {
    cells: Mutex<HashMap<String, Arc<Builder>>>,
}

/// The host and job that built a derivation, once known (`None`: its build failed).
type Builder = OnceLock<Option<(Placement, String)>>;

impl RunBuilds {
    fn cell(&self, key: &str) -> Arc<Builder> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells.entry(key.to_string()).or_default().clone()
    }

    /// Realize the claim's derivation on `placement` with `realise`: built here when no
    /// other host of the run has built it; else its `outputs` are received from the host
    /// that did first (the claim notes the wait). The copy command, when there was one,
    /// is added to what `realise` returns.
    pub fn realise(
        &self,
        claim: &Claim,
        nix: &Nix,
        placement: &Placement,
        outputs: &[String],
        log: &HostLog,
        realise: &dyn Fn() -> Result<(Vec<std::path::PathBuf>, Vec<String>)>,
    ) -> Result<(Vec<std::path::PathBuf>, Vec<String>)> {
        if placement.is_local() {
            return realise();
        }
        let key = claim.key;
        let cell = self.cell(key);
        let mut first = None;
        let asked = Instant::now();
        let builder = cell.get_or_init(|| {
            let built = realise();
            let ok = built.is_ok();
            first = Some(built);
            ok.then(|| (placement.clone(), claim.job.to_string()))
        });
        if let Some(built) = first {
            return built;
        }
        claim.waited_for(builder.as_ref().map(|(_, job)| job.as_str()), asked);
        let mut copied = None;
        if let Some((source, _)) = builder.as_ref().filter(|(b, _)| b != placement) {
            log.line(&format!(
                "`{key}` was built on `{}` in this run: its outputs are received from there",
                source.host_name()
            ));
            match placement.receive_from(nix, source, outputs, log) {
                Ok(cmd) => copied = cmd,
                Err(e) => log.line(&format!("receiving them failed, building here instead: {e:#}")),
            }
        }
        let (roots, mut reproduce) = realise()?;
        if let Some(cmd) = copied {
            reproduce.insert(0, cmd);
        }
        Ok((roots, reproduce))
    }
}
