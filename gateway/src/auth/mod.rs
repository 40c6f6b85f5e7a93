//! Who is calling: the verified identity a request carries once its token was
//! accepted. Later stages (rate limits and quotas per subject, access logs, the
//! identity headers sent upstream) read it from here.

/// The verified caller of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The token's issuer (`iss`).
    pub issuer: String,
    /// The caller (`sub`).
    pub subject: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Granted roles.
    pub roles: Vec<String>,
    /// A hash of the token's `jti`, for logs and revocation (never the token).
    pub token_id: Option<String>,
}
