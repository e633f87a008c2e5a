#include "shim.h"
#include <stdlib.h>
#include <string.h>

uint32_t pmf_version(void) { return FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION); }
struct fi_info *pmf_allocinfo(void) { return fi_allocinfo(); }
int pmf_set_prov_name(struct fi_info *hints, const char *name)
{
	char *copy = strdup(name);
	if (!copy)
		return -FI_ENOMEM;
	free(hints->fabric_attr->prov_name);
	hints->fabric_attr->prov_name = copy;
	return 0;
}
int pmf_close(struct fid *fid) { return fi_close(fid); }
int pmf_domain(struct fid_fabric *fabric, struct fi_info *info, struct fid_domain **domain)
{ return fi_domain(fabric, info, domain, NULL); }
int pmf_endpoint(struct fid_domain *domain, struct fi_info *info, struct fid_ep **ep)
{ return fi_endpoint(domain, info, ep, NULL); }
int pmf_cq_open(struct fid_domain *domain, struct fi_cq_attr *attr, struct fid_cq **cq)
{ return fi_cq_open(domain, attr, cq, NULL); }
int pmf_av_open(struct fid_domain *domain, struct fi_av_attr *attr, struct fid_av **av)
{ return fi_av_open(domain, attr, av, NULL); }
int pmf_ep_bind(struct fid_ep *ep, struct fid *bfid, uint64_t flags)
{ return fi_ep_bind(ep, bfid, flags); }
int pmf_enable(struct fid_ep *ep) { return fi_enable(ep); }
int pmf_getname(struct fid *fid, void *addr, size_t *addrlen)
{ return fi_getname(fid, addr, addrlen); }
int pmf_av_insert(struct fid_av *av, const void *addr, fi_addr_t *fi_addr)
{ return fi_av_insert(av, addr, 1, fi_addr, 0, NULL); }
int pmf_mr_reg(struct fid_domain *domain, const void *buf, size_t len, uint64_t access,
               uint64_t requested_key, struct fid_mr **mr)
{ return fi_mr_reg(domain, buf, len, access, 0, requested_key, 0, mr, NULL); }
int pmf_av_remove(struct fid_av *av, fi_addr_t fi_addr)
{ return fi_av_remove(av, &fi_addr, 1, 0); }
uint64_t pmf_mr_key(struct fid_mr *mr) { return fi_mr_key(mr); }
void *pmf_mr_desc(struct fid_mr *mr) { return fi_mr_desc(mr); }
int pmf_mr_bind(struct fid_mr *mr, struct fid *bfid, uint64_t flags)
{ return fi_mr_bind(mr, bfid, flags); }
int pmf_mr_enable(struct fid_mr *mr) { return fi_mr_enable(mr); }
ssize_t pmf_read(struct fid_ep *ep, void *buf, size_t len, void *desc, fi_addr_t src,
                 uint64_t addr, uint64_t key, void *context)
{ return fi_read(ep, buf, len, desc, src, addr, key, context); }
ssize_t pmf_write(struct fid_ep *ep, const void *buf, size_t len, void *desc, fi_addr_t dest,
                  uint64_t addr, uint64_t key, void *context)
{ return fi_write(ep, buf, len, desc, dest, addr, key, context); }
ssize_t pmf_cq_read(struct fid_cq *cq, struct fi_cq_entry *buf, size_t count)
{ return fi_cq_read(cq, buf, count); }
ssize_t pmf_cq_sread(struct fid_cq *cq, struct fi_cq_entry *buf, size_t count, int timeout_ms)
{ return fi_cq_sread(cq, buf, count, NULL, timeout_ms); }
ssize_t pmf_cq_readerr(struct fid_cq *cq, struct fi_cq_err_entry *buf)
{ return fi_cq_readerr(cq, buf, 0); }
const char *pmf_cq_strerror(struct fid_cq *cq, int prov_errno, const void *err_data, char *buf,
                            size_t len)
{ return fi_cq_strerror(cq, prov_errno, err_data, buf, len); }
