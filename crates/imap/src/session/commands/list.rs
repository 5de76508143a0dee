//! LIST and LSUB, plain and extended (RFC 5258, RFC 5819 LIST-STATUS): the session's side;
//! patterns and the response lines are `crate::list`'s.

use crate::session::*;

impl Session {
    pub(in crate::session) async fn list(&mut self, mut request: ListRequest) -> Done {
        request.utf8 = self.utf8;
        let Some(account) = self.account_id() else {
            return bad("Log in first");
        };
        let mailboxes = match self.ctx.store.mailboxes(account).await {
            Ok(m) => m,
            Err(e) => return store_failure(&e),
        };
        let subscriptions = match self.ctx.store.subscriptions(account).await {
            Ok(s) => s,
            Err(e) => return store_failure(&e),
        };
        let verb = if request.lsub { "LSUB" } else { "LIST" };
        let listed = match list::respond(&request, &mailboxes, &subscriptions) {
            Ok(listed) => listed,
            Err(why) => return bad(why),
        };
        for listed in listed {
            self.out.extend_from_slice(&listed.line);
            if let (Some(items), Some(mailbox)) = (&request.status, &listed.mailbox)
                && let Err(e) = self.status_line(mailbox, items).await
            {
                return store_failure(&e);
            }
        }
        ok(format!("{verb} completed"))
    }
}

/// The LIST request the driver parsed itself (RFC 5258 extended syntax), run like LIST.
pub async fn run_list(session: &mut Session, tag: &str, request: ListRequest) {
    let done = if session.account.is_none() {
        bad("Log in first")
    } else {
        session.list(request).await
    };
    session.tagged(tag, done);
}
