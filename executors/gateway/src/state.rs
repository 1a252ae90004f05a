//! What every handler sees: the settings of the listener, its models and its metrics.

use std::sync::{Arc, RwLock};

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::models::Models;

pub(crate) struct State {
    settings: RwLock<Settings>,
    pub(crate) models: Models,
    pub(crate) metrics: Metrics,
}

pub(crate) type Shared = Arc<State>;

impl State {
    pub(crate) fn new(settings: Settings, models: Models) -> Self {
        State {
            settings: RwLock::new(settings),
            models,
            metrics: Metrics::default(),
        }
    }

    pub(crate) fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// New settings but the address, which is the one bound.
    pub(crate) fn set_settings(&self, mut settings: Settings) {
        self.models.set_budget(settings.memory_budget);
        let mut current = self.settings.write().unwrap_or_else(|e| e.into_inner());
        settings.listen = current.listen;
        *current = settings;
    }
}
