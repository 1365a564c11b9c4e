//! The mesh's own module: engine functions about workers, functions and
//! triggers (`docs/protocol.md` §4), and the trigger types the engine fires
//! on mesh changes. One file per family: [`catalog`] (`engine::functions::*`),
//! [`workers`], [`triggers`]; [`events`] fires `engine::workers-available`
//! and `engine::functions-available`; [`views`] builds the response shapes.
//!
//! `engine::workers::register` is part of the handshake and is handled by
//! `mesh::session`, because it must be applied in order with registrations.
//!
//! Architecture invariant: this module reads the mesh's tables and nothing
//! else; it knows no other module.

pub(crate) mod catalog;
pub(crate) mod events;
pub(crate) mod triggers;
pub(crate) mod views;
pub(crate) mod workers;

use std::sync::Arc;
use tokio::task::JoinHandle;

use crate::mesh::provided::FiredByEngine;
use crate::mesh::{Mesh, Provisions};
use crate::module::Module;

/// The introspection functions and the engine's own trigger types.
pub(crate) struct Introspection {
    mesh: Mesh,
}

impl Introspection {
    pub(crate) fn new(mesh: &Mesh) -> Self {
        Self { mesh: mesh.clone() }
    }
}

impl Module for Introspection {
    fn name(&self) -> &'static str {
        "introspection"
    }

    fn provide(&self, p: &mut Provisions) {
        p.mesh_sync_fn("engine::functions::list", catalog::list);
        p.mesh_sync_fn("engine::functions::info", catalog::info);
        p.mesh_sync_fn("engine::workers::list", workers::list);
        p.mesh_sync_fn("engine::workers::info", workers::info);
        p.mesh_sync_fn("engine::triggers::list", triggers::list_types);
        p.mesh_sync_fn("engine::triggers::info", triggers::type_info);
        p.mesh_sync_fn("engine::registered-triggers::list", triggers::list_bindings);
        p.mesh_sync_fn("engine::registered-triggers::info", triggers::binding_info);
        p.mesh_async_fn("engine::register_trigger", triggers::register);
        p.mesh_sync_fn("engine::unregister_trigger", triggers::unregister);
        p.trigger_type(
            events::WORKERS_AVAILABLE,
            "Fires when a worker connects, disconnects or updates its metadata",
            Arc::new(FiredByEngine),
        );
        p.trigger_type(
            events::FUNCTIONS_AVAILABLE,
            "Fires when the set of registered functions changes",
            Arc::new(FiredByEngine),
        );
    }

    fn start(&self) -> Vec<JoinHandle<()>> {
        vec![tokio::spawn(events::run(self.mesh.clone()))]
    }
}
