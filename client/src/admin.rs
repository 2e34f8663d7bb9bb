//! Topic administration: create, delete, list, describe, alter configs, add partitions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use vltava_messages::protocol::{
    AlterTopicConfigsRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeTopicsRequest, MetadataResponse, NewTopic, PartitionCountChange, TopicConfigChanges,
    TopicDescription,
};

use vltava_messages::protocol::{RequestBody, TopicResult};

use crate::cluster::Cluster;
use crate::error::{ClientError, check};

/// How long an admin request may take: creating a topic waits for its partitions to open.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The first topic error of an admin answer, if any.
fn check_topics(topics: Vec<TopicResult>) -> Result<(), ClientError> {
    topics.into_iter().try_for_each(|topic| check(topic.error))
}

/// Topic administration over a cluster.
#[derive(Clone, Debug)]
pub struct Admin {
    cluster: Arc<Cluster>,
}

impl Admin {
    #[must_use]
    pub fn new(cluster: Arc<Cluster>) -> Admin {
        Admin { cluster }
    }

    async fn send<R: RequestBody>(&self, request: &R) -> Result<R::Response, ClientError> {
        self.cluster
            .any_connection()
            .await?
            .send(request, ADMIN_TIMEOUT)
            .await
    }

    /// Creates a topic; returns once its partitions serve.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let request = CreateTopicsRequest {
            topics: vec![NewTopic {
                name: name.to_owned(),
                partitions: Some(partitions),
                replication_factor: Some(replication_factor),
                configs,
            }],
            timeout_ms: ADMIN_TIMEOUT.as_millis() as u32,
            validate_only: false,
        };
        let answer = self.send(&request).await?;
        check_topics(answer.topics)?;
        self.cluster.refresh().await?;
        Ok(())
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteTopicsRequest {
            topics: vec![name.to_owned()],
            timeout_ms: ADMIN_TIMEOUT.as_millis() as u32,
        };
        let answer = self.send(&request).await?;
        check_topics(answer.topics)?;
        Ok(())
    }

    /// The cluster's metadata: nodes and every topic's partitions.
    pub async fn metadata(&self) -> Result<MetadataResponse, ClientError> {
        self.cluster.refresh().await
    }

    /// Partitions and effective configs of topics (all when `names` is empty).
    pub async fn describe_topics(
        &self,
        names: &[String],
    ) -> Result<Vec<TopicDescription>, ClientError> {
        let request = DescribeTopicsRequest {
            topics: names.to_vec(),
        };
        Ok(self.send(&request).await?.topics)
    }

    /// Sets and removes config keys of a topic.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    ) -> Result<(), ClientError> {
        let request = AlterTopicConfigsRequest {
            topics: vec![TopicConfigChanges {
                name: name.to_owned(),
                set,
                delete,
            }],
            validate_only: false,
        };
        let answer = self.send(&request).await?;
        check_topics(answer.topics)?;
        Ok(())
    }

    /// Raises a topic's partition count to `count`.
    pub async fn create_partitions(&self, name: &str, count: u32) -> Result<(), ClientError> {
        let request = CreatePartitionsRequest {
            topics: vec![PartitionCountChange {
                name: name.to_owned(),
                count,
            }],
            timeout_ms: ADMIN_TIMEOUT.as_millis() as u32,
            validate_only: false,
        };
        let answer = self.send(&request).await?;
        check_topics(answer.topics)?;
        self.cluster.refresh().await?;
        Ok(())
    }
}
