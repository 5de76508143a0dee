//! Mailbox management (RFC 3501 6.3: CREATE, DELETE, RENAME, SUBSCRIBE, STATUS, APPEND) and
//! quotas (RFC 9208: what an account may still take, GETQUOTAROOT and the QUOTA response).

use crate::session::*;

impl Session {
    pub(in crate::session) async fn create(&mut self, mailbox: &WireMailbox<'_>) -> Done {
        let Some(account) = self.account_id() else {
            return bad("Log in first");
        };
        let store = self.ctx.store.clone();
        let Some(name) = mailbox_name(mailbox, self.utf8) else {
            return no("[CANNOT] Mailbox name is not valid modified UTF-7");
        };
        let name = name.trim_end_matches('/').to_string();
        if name.eq_ignore_ascii_case("INBOX") {
            return no("[ALREADYEXISTS] INBOX always exists");
        }
        if !valid_new_name(&name) {
            return no(
                "[CANNOT] Mailbox names need non-empty levels separated by \"/\", no wildcards or control characters, at most 255 bytes and 16 levels",
            );
        }
        // RFC 3501 6.3.3: create the superior levels that do not exist yet.
        let levels: Vec<&str> = name.split('/').collect();
        for depth in 1..levels.len() {
            let parent = levels[..depth].join("/");
            match store.create_mailbox(account, &parent).await {
                Ok(_) | Err(StoreError::Duplicate(_)) => {}
                Err(e) => return store_failure(&e),
            }
        }
        match store.create_mailbox(account, &name).await {
            Ok(_) => ok("CREATE completed"),
            Err(e) => store_failure(&e),
        }
    }

    pub(in crate::session) async fn delete(&mut self, mailbox: &WireMailbox<'_>) -> Done {
        let Some(account) = self.account_id() else {
            return bad("Log in first");
        };
        let store = self.ctx.store.clone();
        match mailbox_name(mailbox, self.utf8) {
            None => no("[NONEXISTENT] No such mailbox"),
            Some(name) => {
                if self.selected.as_ref().is_some_and(|s| s.mailbox.name == name) {
                    self.selected = None;
                    self.saved.clear();
                }
                match store.delete_mailbox(account, &name).await {
                    Ok(()) => ok("DELETE completed"),
                    Err(e) => store_failure(&e),
                }
            }
        }
    }

    pub(in crate::session) async fn rename(&mut self, from: &WireMailbox<'_>, to: &WireMailbox<'_>) -> Done {
        let Some(account) = self.account_id() else {
            return bad("Log in first");
        };
        let store = self.ctx.store.clone();
        match (mailbox_name(from, self.utf8), mailbox_name(to, self.utf8)) {
            (Some(from), Some(to)) => {
                let to = to.trim_end_matches('/').to_string();
                if !valid_new_name(&to) {
                    return no("[CANNOT] The new name is not a valid mailbox name");
                }
                match store.rename_mailbox(account, &from, &to).await {
                    Ok(()) => {
                        if let Some(selected) = self.selected.as_mut()
                            && selected.mailbox.name == from
                        {
                            selected.mailbox.name = to;
                        }
                        ok("RENAME completed")
                    }
                    Err(e) => store_failure(&e),
                }
            }
            _ => no("[NONEXISTENT] No such mailbox"),
        }
    }

    pub(in crate::session) async fn subscribe(&mut self, mailbox: &WireMailbox<'_>, subscribe: bool) -> Done {
        let Some(account) = self.account_id() else {
            return bad("Log in first");
        };
        let store = self.ctx.store.clone();
        match mailbox_name(mailbox, self.utf8) {
            None => no("[NONEXISTENT] No such mailbox"),
            Some(name) => match store.set_subscribed(account, &name, subscribe).await {
                Ok(()) => ok(if subscribe {
                    "SUBSCRIBE completed"
                } else {
                    "UNSUBSCRIBE completed"
                }),
                Err(e) => store_failure(&e),
            },
        }
    }

    pub(in crate::session) async fn status(
        &mut self,
        mailbox: &WireMailbox<'_>,
        item_names: &[StatusDataItemName],
    ) -> Done {
        let Some(name) = mailbox_name(mailbox, self.utf8) else {
            return no("[NONEXISTENT] No such mailbox");
        };
        match self.find_mailbox(&name).await {
            Ok(Some(found)) => match self.status_line(&found, item_names).await {
                Ok(()) => ok("STATUS completed"),
                Err(e) => store_failure(&e),
            },
            Ok(None) => no("[NONEXISTENT] No such mailbox"),
            Err(e) => store_failure(&e),
        }
    }

    pub(in crate::session) async fn append(
        &mut self,
        mailbox: &WireMailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<imap_codec::imap_types::datetime::DateTime>,
        message: &LiteralOrLiteral8<'_>,
    ) -> Done {
        let Some(account) = self.account_id() else {
            return bad("Log in first");
        };
        let store = self.ctx.store.clone();
        let target = match self.named_mailbox(mailbox, "[TRYCREATE] No such mailbox").await {
            Ok(found) => found,
            Err(done) => return done,
        };
        if self.utf8_append && !self.utf8 {
            return bad("APPEND ... UTF8 (...) needs ENABLE UTF8=ACCEPT first");
        }
        let content = match &message {
            LiteralOrLiteral8::Literal(literal) => literal.as_ref().to_vec(),
            // RFC 3516 4.4: binary content (a NUL) is not stored here; a literal8
            // without one is an ordinary message.
            LiteralOrLiteral8::Literal8(literal8) if literal8.data.contains(&0) => {
                return no("[UNKNOWN-CTE] Binary content (NUL octets) is not stored here");
            }
            LiteralOrLiteral8::Literal8(literal8) => literal8.data.to_vec(),
        };
        if content.is_empty() {
            return no("An empty message cannot be appended");
        }
        if let Err(done) = self.room_for(account, content.len() as u64).await {
            return done;
        }
        let flags: Vec<String> = flags.iter().filter_map(flag_name).take(MAX_FLAGS).collect();
        let internal_date = date
            .map(|d| d.as_ref().timestamp())
            .unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp());
        let appended = store
            .store_message(NewMessage {
                content,
                mailboxes: vec![target.id],
                internal_date,
                flags,
            })
            .await;
        match appended {
            Ok(stored) => match stored.first() {
                Some(m) => ok(format!(
                    "[APPENDUID {} {}] APPEND completed",
                    target.uid_validity, m.uid
                )),
                None => ok("APPEND completed"),
            },
            Err(e) => store_failure(&e),
        }
    }

    pub(in crate::session) async fn get_quota_root(&mut self, mailbox: &WireMailbox<'_>) -> Done {
        let Some(account) = self.account_id() else {
            return bad("Log in first");
        };
        let Some(name) = mailbox_name(mailbox, self.utf8) else {
            return no("[NONEXISTENT] No such mailbox");
        };
        let mut line = b"* QUOTAROOT ".to_vec();
        wire::string(&mut line, wire::name_to_wire(&name, self.utf8).as_bytes());
        if self.ctx.mailbox_quota > 0 {
            line.extend_from_slice(b" \"\"");
        }
        line.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&line);
        if let Err(done) = self.quota_response(account).await {
            return done;
        }
        ok("GETQUOTAROOT completed")
    }

    /// The account's quota and what it uses now, when a quota is set.
    pub(in crate::session) async fn quota_and_use(
        &self,
        account: sealmail_types::AccountId,
    ) -> Result<Option<(u64, u64)>, Done> {
        let quota = self.ctx.mailbox_quota;
        if quota == 0 {
            return Ok(None);
        }
        let used = self
            .ctx
            .store
            .account_usage(account)
            .await
            .map_err(|e| store_failure(&e))?;
        Ok(Some((quota, used)))
    }

    /// Err(NO [OVERQUOTA]) when `adding` more octets would take the account past its quota.
    pub(in crate::session) async fn room_for(
        &self,
        account: sealmail_types::AccountId,
        adding: u64,
    ) -> Result<(), Done> {
        match self.quota_and_use(account).await? {
            Some((quota, used)) if used.saturating_add(adding) > quota => Err(no(
                "[OVERQUOTA] The mailbox quota would be exceeded; delete some mail",
            )),
            _ => Ok(()),
        }
    }

    /// `* QUOTA "" (STORAGE used limit)` in KiB (RFC 9208 5.1), when a quota is set.
    pub(in crate::session) async fn quota_response(
        &mut self,
        account: sealmail_types::AccountId,
    ) -> Result<(), Done> {
        let Some((quota, used)) = self.quota_and_use(account).await? else {
            return Ok(());
        };
        let _ = write!(
            Text(&mut self.out),
            "* QUOTA \"\" (STORAGE {} {})\r\n",
            used.div_ceil(1024),
            quota / 1024
        );
        Ok(())
    }
}
