//! Live views for operators: `status --watch` redraws from one etcd watch of the app (no
//! polling: nothing is read between changes), and `logs --follow` streams a color's log from its
//! agent. Both run until Ctrl-C or SIGTERM.
use crate::context::Global;
use crate::error::CoordinatorError;
use crate::progress::emit;
use crate::status::{self, AppStatus};
use proto::watch::WatchEvent;
use proto::{AppKey, Color, Keys};
use std::io::IsTerminal;

/// `status --watch`: the status, then again after every change that is not only history.
pub async fn watch_status(global: &Global) -> Result<String, CoordinatorError> {
    let (keys, client) = global.existing_app().await?;
    let mut shutdown = proto::daemon::shutdown_on_signal();
    let mut status = status::read(&client, &keys).await?;
    show(global, &keys, &status);
    let mut watch = status::watch_from(&client, &keys, status.revision + 1);
    loop {
        let event = tokio::select! {
            _ = proto::daemon::shutdown_requested(&mut shutdown) => return Ok(String::new()),
            event = watch.next() => event,
        };
        match event {
            Ok(WatchEvent::Changes { revision, changes }) => {
                let shown = changes
                    .iter()
                    .any(|c| !matches!(keys.parse(&c.key), Some(AppKey::History(_))));
                for change in &changes {
                    status.apply(&keys, change);
                }
                status.revision = revision;
                if shown {
                    show(global, &keys, &status);
                }
            }
            // Compacted past or cancelled: one fresh read, and watch on from there.
            Ok(WatchEvent::Resync(_)) | Err(_) => {
                status = status::read(&client, &keys).await?;
                watch = status::watch_from(&client, &keys, status.revision + 1);
                show(global, &keys, &status);
            }
        }
    }
}

/// One frame: a JSON line, or the text table (on a terminal, redrawn in place).
fn show(global: &Global, keys: &Keys, status: &AppStatus) {
    let mut status = status.clone();
    for release in status.releases.values_mut() {
        release.run.env = proto::secrets::mask_env(&release.run.env);
    }
    if global.json {
        let line = serde_json::to_string(&status).expect("status serializes");
        emit(&format!("{line}\n"));
        return;
    }
    let clear = if std::io::stdout().is_terminal() {
        "\x1b[2J\x1b[H"
    } else {
        "\n"
    };
    let header = format!(
        "{} at revision {} ({}; Ctrl-C to stop)\n",
        keys.app(),
        status.revision,
        proto::time::now_rfc3339()
    );
    emit(&format!(
        "{clear}{header}{}",
        status::render_text(keys.app(), &status)
    ));
}

/// `logs --follow`: the last `tail` lines, then every new one (JSON: one
/// `{"host", "color", "line"}` object per line).
pub async fn follow_logs(
    global: &Global,
    host: &str,
    color: Color,
    tail: u32,
) -> Result<String, CoordinatorError> {
    let record = crate::context::registered_host(global, host).await?;
    let mut shutdown = proto::daemon::shutdown_on_signal();
    let json = global.json;
    let print = |line: String| {
        let line = proto::secrets::mask_text(&line);
        if json {
            let event = serde_json::json!({"host": host, "color": color, "line": line});
            emit(&format!("{event}\n"));
        } else {
            emit(&format!("{line}\n"));
        }
    };
    let probes = global.probes();
    tokio::select! {
        _ = proto::daemon::shutdown_requested(&mut shutdown) => Ok(String::new()),
        followed = probes.follow_logs(&record, color, tail, print) => {
            followed.map(|()| String::new()).map_err(CoordinatorError::unreachable)
        }
    }
}
