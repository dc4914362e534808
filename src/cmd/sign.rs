//! `sign`: the headers the proxy would set for one request, as `Name: value` lines (usable
//! with `curl -H @file`); the string to sign goes to stderr (it holds no secret).

use super::{load, secret_env, Error};
use crate::cli::{Cli, SignArgs};
use crate::credentials::Credentials;
use crate::signer::{timestamp_ms, SignInput};

pub(super) fn run(cli: &Cli, args: &SignArgs) -> Result<(), Error> {
    let cfg = load(cli)?;
    if cfg.emulator.in_process {
        return Err(Error::DevSign);
    }
    let method = args.method.to_ascii_uppercase();
    match args.url.parse::<http::Uri>() {
        Ok(u) if u.scheme().is_some() && u.authority().is_some() => {}
        _ => return Err(Error::NotAUrl(args.url.clone())),
    }
    let creds = Credentials::load(&cfg.credentials, secret_env().as_deref())?;
    let timestamp = timestamp_ms(std::time::SystemTime::now()).to_string();
    let input = SignInput {
        method: &method,
        url_parts: &[&args.url],
        timestamp: &timestamp,
        access_key: &creds.access_key,
        account_id: &creds.account_id,
        client_type: &creds.client_type,
    };
    crate::logging::flush();
    eprintln!("string to sign: {}", input.string_to_sign());
    println!("Scp-Accesskey: {}", creds.access_key);
    println!("Scp-Timestamp: {timestamp}");
    println!("Scp-Signature: {}", creds.key.sign(&input).as_str());
    println!("Scp-ClientType: {}", creds.client_type);
    if !creds.account_id.is_empty() {
        println!("Scp-AccountId: {}", creds.account_id);
    }
    Ok(())
}
