//! Notifications (the notification service, the banking app): Redis lists `notifications:{user_id}` of
//! JSON items `{notification_id, user_id, message, status: "sent"}`.

pub mod consume;
pub mod list;
pub mod watch;

use serde::{Deserialize, Serialize};

use crate::output::{self, Rendered, Report};

/// One notification as stored (the notification service's shape plus `kind` and `created_at`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    pub notification_id: String,
    /// As the event gave it: the notification service passes `user_id` through unchanged.
    pub user_id: serde_json::Value,
    pub message: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// The event this notifies of, when the event named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// A user's notifications, newest first.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct NotificationList(pub Vec<Notification>);

impl Report for NotificationList {
    fn render(&self) -> Rendered {
        let mut table = output::table(["notification", "message", "status", "created_at"]);
        for n in &self.0 {
            table.add_row(vec![
                n.notification_id.clone(),
                n.message.clone(),
                n.status.clone(),
                n.created_at.clone().unwrap_or_default(),
            ]);
        }
        Rendered::Table(table)
    }
}

/// Checks a user id used in a key.
pub fn validate_user(user: &str) -> anyhow::Result<()> {
    crate::store::check_id("user_id", user).map_err(|e| anyhow::anyhow!("invalid user id: {e}"))
}
