//! {{name}}: a Sluice handler for messages on `{{channel}}`.

use sluice_sdk::prelude::*;

/// The request: a message's JSON body. A body that does not parse is
/// dead-lettered before `handle` is called, with serde's reason.
#[derive(Debug, Deserialize)]
pub struct {{Type}}Request {
    /// Who to greet.
    pub name: String,
}

/// The plugin.
pub struct {{Type}};

impl Handler for {{Type}} {
    type Request = {{Type}}Request;

    fn describe() -> Describe {
        Describe::handler("{{name}}", env!("CARGO_PKG_VERSION"))
            .channel("{{channel}}")
            // Per-call limits; the host's configuration has the last word.
            .timeout_ms(5_000)
    }

    fn handle(ctx: &mut Context, req: {{Type}}Request) -> Result<Outcome, Error> {
        let name = req.name.trim();
        if name.is_empty() {
            // Retrying cannot fix this request: dead-letter it at once.
            return Err(Error::permanent("name is empty"));
        }
        // Effects (state, posts, progress) commit with the job's outcome,
        // and only if this call returns Ok.
        let seen: u64 = ctx.state().get("seen")?.unwrap_or(0);
        ctx.state().set("seen", &(seen + 1))?;
        ctx.post("{{channel}}.done", &serde_json::json!({ "name": name }))?;
        sluice_sdk::log::info(&format!("greeted {name}"));
        Outcome::done_with(&serde_json::json!({
            "greeting": format!("hello {name}"),
            "seen": seen + 1,
        }))
    }
}

sluice_sdk::export_handler!({{Type}});

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::testing::TestHost;

    #[test]
    fn greets_counts_and_posts() {
        let mut host = TestHost::new();
        let outcome = host
            .handle::<{{Type}}>(&serde_json::json!({ "name": "Ann" }))
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::done_with(&serde_json::json!({ "greeting": "hello Ann", "seen": 1 })).unwrap()
        );
        assert_eq!(host.state::<u64>("seen"), Some(1));
        assert_eq!(host.posts()[0].channel, "{{channel}}.done");
    }

    #[test]
    fn an_empty_name_is_permanent_and_commits_nothing() {
        let mut host = TestHost::new();
        let err = host
            .handle::<{{Type}}>(&serde_json::json!({ "name": " " }))
            .unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(host.state::<u64>("seen"), None);
        assert!(host.posts().is_empty());
    }
}
