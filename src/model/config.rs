//! The BLIP-2 configuration, mirroring the `config.json` of a Hugging Face checkpoint.
//!
//! Field names are the keys of `config.json`; defaults are those of transformers'
//! `Blip2VisionConfig`, `Blip2QFormerConfig` and `Blip2Config`, because hub configs leave most
//! keys out and rely on them. Every size the model uses comes from here: nothing in `model/`
//! assumes 32 queries, 12 heads or 224 px.

use serde::Deserialize;

use crate::error::{Error, Result};

/// Activation functions named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// Exact GELU with erf (transformers' `"gelu"`), what BLIP-2 uses.
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
    /// `x * sigmoid(1.702 x)`, as in OpenAI CLIP.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
}

fn default_gelu() -> Activation {
    Activation::Gelu
}

/// `vision_config`: the EVA ViT image encoder.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    /// Width of the residual stream.
    #[serde(default = "VisionConfig::default_hidden_size")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "VisionConfig::default_intermediate_size")]
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    #[serde(default = "VisionConfig::default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    #[serde(default = "VisionConfig::default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Side of the square input image, in pixels.
    #[serde(default = "VisionConfig::default_image_size")]
    pub image_size: usize,
    /// Side of a square patch, in pixels.
    #[serde(default = "VisionConfig::default_patch_size")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "default_gelu")]
    pub hidden_act: Activation,
    /// LayerNorm epsilon. Hub configs written before transformers PR #24854 lack it; the
    /// trained value is 1e-6.
    #[serde(default = "VisionConfig::default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Whether the attention has q and v biases (k has none by design).
    #[serde(default = "VisionConfig::default_qkv_bias")]
    pub qkv_bias: bool,
}

impl VisionConfig {
    fn default_hidden_size() -> usize {
        1408
    }
    fn default_intermediate_size() -> usize {
        6144
    }
    fn default_num_hidden_layers() -> usize {
        39
    }
    fn default_num_attention_heads() -> usize {
        16
    }
    fn default_image_size() -> usize {
        224
    }
    fn default_patch_size() -> usize {
        14
    }
    fn default_layer_norm_eps() -> f64 {
        1e-6
    }
    fn default_qkv_bias() -> bool {
        true
    }

    /// Patches along one side of the image.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens the encoder outputs per image: one per patch plus the class token.
    pub fn num_tokens(&self) -> usize {
        self.patches_per_side() * self.patches_per_side() + 1
    }
}

/// `qformer_config`: the Querying Transformer (a BERT with cross-attention).
#[derive(Debug, Clone, Deserialize)]
pub struct QFormerConfig {
    /// Vocabulary of the text embeddings (30523 for the retrieval checkpoints: BERT + `[DEC]`).
    #[serde(default = "QFormerConfig::default_vocab_size")]
    pub vocab_size: usize,
    /// Width of the residual stream.
    #[serde(default = "QFormerConfig::default_hidden_size")]
    pub hidden_size: usize,
    /// Number of layers.
    #[serde(default = "QFormerConfig::default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "QFormerConfig::default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Width of the feed-forward networks.
    #[serde(default = "QFormerConfig::default_intermediate_size")]
    pub intermediate_size: usize,
    /// Feed-forward activation.
    #[serde(default = "default_gelu")]
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "QFormerConfig::default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Rows of the learned text position table: the longest text the model can read.
    #[serde(default = "QFormerConfig::default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Id of the padding token.
    #[serde(default)]
    pub pad_token_id: usize,
    /// Only `"absolute"` is supported (what BLIP-2 uses).
    #[serde(default = "QFormerConfig::default_position_embedding_type")]
    pub position_embedding_type: String,
    /// A layer `i` cross-attends the image when `i % cross_attention_frequency == 0`.
    #[serde(default = "QFormerConfig::default_cross_attention_frequency")]
    pub cross_attention_frequency: usize,
    /// Whether the layers have the text feed-forward network (`intermediate`/`output`) next to
    /// the query one. The first hub configs spelled it `qformer_text_input`.
    #[serde(default, alias = "qformer_text_input")]
    pub use_qformer_text_input: bool,
}

impl QFormerConfig {
    fn default_vocab_size() -> usize {
        30522
    }
    fn default_hidden_size() -> usize {
        768
    }
    fn default_num_hidden_layers() -> usize {
        12
    }
    fn default_num_attention_heads() -> usize {
        12
    }
    fn default_intermediate_size() -> usize {
        3072
    }
    fn default_layer_norm_eps() -> f64 {
        1e-12
    }
    fn default_max_position_embeddings() -> usize {
        512
    }
    fn default_position_embedding_type() -> String {
        "absolute".to_string()
    }
    fn default_cross_attention_frequency() -> usize {
        2
    }

    /// Whether layer `i` has a cross-attention block.
    pub fn has_cross_attention(&self, layer: usize) -> bool {
        layer.is_multiple_of(self.cross_attention_frequency)
    }
}

/// The top level of `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Blip2Config {
    /// Image encoder settings (all defaults when absent).
    #[serde(default = "Blip2Config::default_vision")]
    pub vision_config: VisionConfig,
    /// Q-Former settings (all defaults when absent).
    #[serde(default = "Blip2Config::default_qformer")]
    pub qformer_config: QFormerConfig,
    /// Number of learned query tokens.
    #[serde(default = "Blip2Config::default_num_query_tokens")]
    pub num_query_tokens: usize,
    /// Dimension of the ITC embedding space.
    #[serde(default = "Blip2Config::default_image_text_hidden_size")]
    pub image_text_hidden_size: usize,
    /// Class names, e.g. `["Blip2ForImageTextRetrieval"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Must be `"blip-2"`.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Id of the `<image>` placeholder token in the language model's vocabulary; absent in the
    /// legacy captioning layout, where the visual rows are concatenated in front instead.
    #[serde(default)]
    pub image_token_index: Option<u32>,
    /// The language model's configuration (read by the captioning loader; the retrieval model
    /// carries a dummy one).
    #[serde(default)]
    pub text_config: Option<serde_json::Value>,
}

impl Blip2Config {
    fn default_vision() -> VisionConfig {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
    fn default_qformer() -> QFormerConfig {
        serde_json::from_str("{}").expect("defaults deserialize")
    }
    fn default_num_query_tokens() -> usize {
        32
    }
    fn default_image_text_hidden_size() -> usize {
        256
    }

    /// Parses `config.json` text and checks that the sizes fit together.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: Self =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration of the real `Salesforce/blip2-itm-vit-g` checkpoint (224 px).
    pub fn blip2_itm_vit_g() -> Self {
        let mut config: Self = serde_json::from_str("{}").expect("defaults deserialize");
        config.qformer_config.vocab_size = 30523;
        config.qformer_config.use_qformer_text_input = true;
        config.architectures = vec!["Blip2ForImageTextRetrieval".into()];
        config.model_type = Some("blip-2".into());
        config
    }

    /// Rejects configurations the model cannot run, with the offending key named.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision_config;
        let q = &self.qformer_config;
        let bad = |m: String| Err(Error::Config(m));
        if let Some(t) = &self.model_type {
            if t != "blip-2" {
                return bad(format!("model_type is {t:?}, expected \"blip-2\""));
            }
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return bad(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return bad(format!(
                "vision_config.hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if q.num_attention_heads == 0 || !q.hidden_size.is_multiple_of(q.num_attention_heads) {
            return bad(format!(
                "qformer_config.hidden_size {} is not divisible by num_attention_heads {}",
                q.hidden_size, q.num_attention_heads
            ));
        }
        if q.cross_attention_frequency == 0 {
            return bad("qformer_config.cross_attention_frequency must be at least 1".into());
        }
        if q.position_embedding_type != "absolute" {
            return bad(format!(
                "qformer_config.position_embedding_type {:?} is not supported (only \"absolute\")",
                q.position_embedding_type
            ));
        }
        if self.num_query_tokens == 0 {
            return bad("num_query_tokens must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_config_of_blip2_itm_vit_g_gets_the_real_sizes() {
        let text = r#"{"architectures":["Blip2ForImageTextRetrieval"],"image_text_hidden_size":256,
            "initializer_factor":1.0,"initializer_range":0.02,"model_type":"blip-2",
            "num_query_tokens":32,"qformer_config":{"model_type":"blip_2_qformer",
            "use_qformer_text_input":true,"vocab_size":30523},"text_config":{"model_type":"opt"},
            "torch_dtype":"float32","transformers_version":"4.41.0.dev0",
            "use_decoder_only_language_model":true,"vision_config":{"model_type":"blip_2_vision_model"}}"#;
        let c = Blip2Config::from_json(text).unwrap();
        assert_eq!(c.vision_config.hidden_size, 1408);
        assert_eq!(c.vision_config.num_hidden_layers, 39);
        assert_eq!(c.vision_config.num_tokens(), 257);
        assert_eq!(c.vision_config.layer_norm_eps, 1e-6);
        assert_eq!(c.qformer_config.hidden_size, 768);
        assert!(c.qformer_config.use_qformer_text_input);
        assert_eq!(c.qformer_config.vocab_size, 30523);
        assert!(c.qformer_config.has_cross_attention(10));
        assert!(!c.qformer_config.has_cross_attention(11));
    }

    #[test]
    fn old_qformer_text_input_spelling_is_accepted() {
        let c =
            Blip2Config::from_json(r#"{"qformer_config":{"qformer_text_input":true}}"#).unwrap();
        assert!(c.qformer_config.use_qformer_text_input);
        let c = Blip2Config::from_json(r#"{"qformer_config":{}}"#).unwrap();
        assert!(!c.qformer_config.use_qformer_text_input);
    }

    #[test]
    fn inconsistent_sizes_are_rejected_with_the_key_named() {
        let e = Blip2Config::from_json(r#"{"vision_config":{"image_size":225}}"#).unwrap_err();
        assert!(
            e.to_string().contains("vision_config.image_size 225"),
            "{e}"
        );
        let e = Blip2Config::from_json(r#"{"model_type":"bert"}"#).unwrap_err();
        assert!(e.to_string().contains("model_type"), "{e}");
        let e = Blip2Config::from_json(r#"{"qformer_config":{"hidden_act":"swish"}}"#).unwrap_err();
        assert!(
            e.to_string().contains("hidden_act") || e.to_string().contains("swish"),
            "{e}"
        );
    }
}
